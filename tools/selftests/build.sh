#!/bin/bash
# Build Linux's own iommufd selftests (tools/testing/selftests/iommu: `iommufd` and
# `iommufd_fail_nth`) from Debian's linux-source-6.12, the same 6.12 tree as the VM kernel,
# and print the directory holding the two binaries.
#
#   tools/selftests/build.sh            # -> build/selftests/bin
#
# Sources, in this order:
#   $FASTMAP_LINUX_SOURCE   an unpacked tree (needs tools/testing/selftests, include/uapi
#                           and drivers/iommu/iommufd)
#   build/selftests/linux-source-6.12/   unpacked by an earlier run
#   $FASTMAP_LINUX_SOURCE_DEB, or the .deb cached in build/selftests/, or
#   `apt-get download linux-source-6.12` (bookworm-backports on bookworm) into that cache.
#
# The compatibility edit (compat-6.12.patch, applied to a copy): the stable tree's
# selftest names uAPI items that only newer kernels have (IOMMU_HW_INFO_TYPE_DEFAULT,
# iommu_hw_info.in_data_type with IOMMU_HW_INFO_FLAG_INPUT_TYPE, MOCK_FLAGS_DEVICE_PASID,
# MOCK_PASID_WIDTH); the patch defines them as those kernels do, and turns the
# mock_domain variant's pasid_capable off, since 6.12's mock driver has no PASID device
# (every test of that variant would fail in setup). The tests that use the newer items
# still run, and fail on 6.12 like they would on the real kernel.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../vmtest/lib.sh
. "$here/../vmtest/lib.sh"
repo=$(cd "$here/../.." && pwd)
out=${FASTMAP_SELFTESTS_BUILD:-$repo/build/selftests}
mkdir -p "$out"
log() { echo "selftests: $*" >&2; }
die() { echo "selftests: error: $*" >&2; exit 1; }

subdirs=(tools/testing/selftests/kselftest.h tools/testing/selftests/kselftest_harness.h
         tools/testing/selftests/iommu drivers/iommu/iommufd/iommufd_test.h
         include/uapi/linux/iommufd.h include/uapi/linux/vfio.h)

have_tree() {
  local d=$1 s
  for s in "${subdirs[@]}"; do [ -e "$d/$s" ] || return 1; done
}

find_deb() {
  if [ -n "${FASTMAP_LINUX_SOURCE_DEB:-}" ]; then echo "$FASTMAP_LINUX_SOURCE_DEB"; return; fi
  ls "$out"/linux-source-6.12_*.deb 2>/dev/null | tail -n1 || true
}

download_deb() {
  export DEBIAN_FRONTEND=noninteractive
  local pkg=linux-source-6.12
  if [ "$(vmtest_codename)" = bookworm ]; then
    if [ "$(vmtest_ensure_backports)" = added ] || ! apt-cache policy "$pkg" | grep -q bookworm-backports; then
      apt-get update -q >&2
    fi
    pkg=$pkg/bookworm-backports
  fi
  (cd "$out" && apt-get download -q "$pkg" >&2)
}

# Unpack only the files the two programs need from the source tarball inside the .deb.
unpack_deb() {
  local deb=$1 tmp
  tmp=$(mktemp -d "$out/unpack.XXXXXX")
  log "unpacking $(basename "$deb")"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards './usr/src/linux-source-6.12.tar.*'
  local tarball
  tarball=$(ls "$tmp"/usr/src/linux-source-6.12.tar.* | head -n1)
  tar -xf "$tarball" -C "$tmp" "${subdirs[@]/#/linux-source-6.12/}"
  rm -rf "$out/linux-source-6.12"
  mv "$tmp/linux-source-6.12" "$out/linux-source-6.12"
  rm -rf "$tmp"
}

src=${FASTMAP_LINUX_SOURCE:-}
if [ -n "$src" ]; then
  have_tree "$src" || die "FASTMAP_LINUX_SOURCE=$src lacks the selftest or uAPI files"
else
  src=$out/linux-source-6.12
  if ! have_tree "$src"; then
    deb=$(find_deb)
    if [ -z "$deb" ]; then download_deb; deb=$(find_deb); fi
    [ -n "$deb" ] && [ -r "$deb" ] || die "no linux-source-6.12 package"
    unpack_deb "$deb"
  fi
fi

command -v gcc >/dev/null || die "gcc is not installed"

# A copy of the selftest directory with the compatibility edit, and the tree's own uAPI
# headers for iommufd and VFIO ahead of the system's (older) ones.
work=$out/work
rm -rf "$work"
mkdir -p "$work/tools/testing/selftests" "$work/drivers/iommu/iommufd" "$work/include/linux"
cp -r "$src/tools/testing/selftests/iommu" "$work/tools/testing/selftests/"
cp "$src/tools/testing/selftests/kselftest.h" "$src/tools/testing/selftests/kselftest_harness.h" \
   "$work/tools/testing/selftests/"
cp "$src/drivers/iommu/iommufd/iommufd_test.h" "$work/drivers/iommu/iommufd/"
# As headers_install does: user-space headers carry no sparse annotations.
for h in iommufd.h vfio.h; do
  sed -E 's/\b__(user|force|iomem)\b *//g' "$src/include/uapi/linux/$h" > "$work/include/linux/$h"
done
patch -s -d "$work" -p1 < "$here/compat-6.12.patch"

bin=$out/bin
mkdir -p "$bin"
for prog in iommufd iommufd_fail_nth; do
  gcc -Wall -O2 -Wno-unused-function -D_GNU_SOURCE= -isystem "$work/include" \
    -o "$bin/$prog.tmp" "$work/tools/testing/selftests/iommu/$prog.c" -lpthread
  mv "$bin/$prog.tmp" "$bin/$prog"
done
echo "$bin"
