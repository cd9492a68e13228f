#!/bin/bash
# Fetch the Linux 6.12 uAPI headers (Debian's linux-libc-dev from bookworm-backports, or
# trixie) into a cache, without installing them over the system's, and print the include
# directory. tests/test_uapi_headers.py compiles against it to check fastmap's struct
# layouts against the kernel's own headers.
#
#   tools/kernel-headers.sh            # prints e.g. ~/.cache/fastmap/linux-libc-dev-6.12.95/usr/include
set -euo pipefail
# shellcheck source=vmtest/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/vmtest/lib.sh"

cache=${FASTMAP_CACHE:-${HOME:-/root}/.cache/fastmap}
mkdir -p "$cache"
existing=$(ls -d "$cache"/linux-libc-dev-6.12*/usr/include 2>/dev/null | tail -n1 || true)
if [ -n "$existing" ] && [ -f "$existing/linux/iommufd.h" ]; then
  echo "$existing"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
case "$(vmtest_codename)" in
  bookworm)
    if [ "$(vmtest_ensure_backports)" = added ] || ! apt-cache policy linux-libc-dev | grep -q bookworm-backports; then
      apt-get update -q >&2
    fi
    pkg=linux-libc-dev/bookworm-backports ;;
  *) pkg=linux-libc-dev ;;
esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -q "$pkg" >&2)
deb=$(ls "$work"/linux-libc-dev_*.deb)
version=$(dpkg-deb -f "$deb" Version)
case "$version" in 6.1[2-9]*|6.[2-9]*|[7-9]*) ;; *) vmtest_die "linux-libc-dev $version is older than 6.12" ;; esac
dest="$cache/linux-libc-dev-${version%%-*}"
rm -rf "$dest"
dpkg-deb -x "$deb" "$dest"
# The multiarch asm/ directory lives under the triplet; expose it where <asm/...> is searched.
triplet=$(ls "$dest/usr/include" | grep -- '-linux-gnu$' | head -n1 || true)
if [ -n "$triplet" ] && [ ! -e "$dest/usr/include/asm" ]; then
  ln -s "$triplet/asm" "$dest/usr/include/asm"
fi
echo "$dest/usr/include"
