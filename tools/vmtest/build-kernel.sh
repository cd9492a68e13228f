#!/bin/bash
# Build the fastmap test kernel (bzImage) from Debian's linux-source-6.12 with the
# fragment kernel.config applied, into the cache:
#   ${FASTMAP_VMTEST_CACHE:-$HOME/.cache/fastmap-vmtest}/bzImage-<hash of kernel.config>
#
#   tools/vmtest/build-kernel.sh [--force] [--config-only]
#
#   --force        rebuild even if the cached bzImage exists
#   --config-only  stop after `make olddefconfig` (prints the path of the .config)
#
# The source package is downloaded with `apt-get download` (bookworm: from
# bookworm-backports, which is added if missing) and unpacked with dpkg-deb -x; it is
# not installed. Build dependencies are installed with apt-get when missing (needs root).
# About 18 minutes on 2 cores. Prints the bzImage path on stdout; logs go to stderr.
# FASTMAP_VMTEST_KEEP_BUILD=1 keeps the build tree (for incremental rebuilds).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

force=0 config_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --force) force=1; shift ;;
    --config-only) config_only=1; shift ;;
    -h|--help) sed -n '2,16s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) vmtest_die "build-kernel.sh: unknown option $1" ;;
  esac
done

src_pkg=linux-source-6.12
hash=$(vmtest_config_hash)
cache=$(vmtest_cache_dir)
image=$cache/bzImage-$hash
mkdir -p "$cache"

if [ "$force" = 0 ] && [ "$config_only" = 0 ] && [ -s "$image" ]; then
  echo "$image"
  exit 0
fi

# One build at a time per cache directory.
exec 9>"$cache/build.lock"
flock 9
if [ "$force" = 0 ] && [ "$config_only" = 0 ] && [ -s "$image" ]; then
  echo "$image"   # built by a concurrent run while we waited
  exit 0
fi

# --- build dependencies -------------------------------------------------------------
deps=(make gcc libc6-dev flex bison bc libelf-dev libssl-dev xz-utils)
missing=()
for p in "${deps[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || vmtest_die "missing build dependencies (run as root to install): ${missing[*]}"
  vmtest_log "installing build dependencies: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 || {
    DEBIAN_FRONTEND=noninteractive apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
  }
fi

# --- source ---------------------------------------------------------------------------
work=$cache/build-$hash
tree=$work/$src_pkg
if [ ! -f "$tree/Makefile" ]; then
  rm -rf "$work"
  mkdir -p "$work/dl" "$work/pkg"
  spec=$src_pkg
  if [ "$(vmtest_codename)" = bookworm ]; then
    spec=$src_pkg/bookworm-backports
    if [ "$(vmtest_ensure_backports)" = added ] || ! apt-cache show "$spec" >/dev/null 2>&1; then
      [ "$(id -u)" -eq 0 ] || vmtest_die "bookworm-backports is not usable here; run as root"
      apt-get update >&2
    fi
  fi
  vmtest_log "downloading $spec"
  # apt-get download warns that it runs unsandboxed as root in a directory _apt cannot
  # write; harmless, so that one warning is filtered out.
  (cd "$work/dl" && apt-get download "$spec" 2> >(grep -v 'unsandboxed as root' >&2) >&2)
  deb=$(find "$work/dl" -maxdepth 1 -name "${src_pkg}_*.deb" | head -n1)
  [ -n "$deb" ] || vmtest_die "apt-get download $spec produced no .deb"
  vmtest_log "unpacking $(basename "$deb")"
  dpkg-deb -x "$deb" "$work/pkg"
  tar -xJf "$work/pkg/usr/src/$src_pkg.tar.xz" -C "$work"
  rm -rf "$work/dl" "$work/pkg"
  [ -f "$tree/Makefile" ] || vmtest_die "unpacked source has no $tree/Makefile"
fi

# --- configuration --------------------------------------------------------------------
cd "$tree"
vmtest_log "configuring $(make -s kernelversion 2>/dev/null) with $vmtest_dir/kernel.config"
{
  make x86_64_defconfig
  make kvm_guest.config
  scripts/kconfig/merge_config.sh -m .config "$vmtest_dir/kernel.config"
  make olddefconfig
} > "$work/config.log" 2>&1 || { tail -n 40 "$work/config.log" >&2; vmtest_die "kernel configuration failed"; }

# Every option the fragment asks for must have landed (a silently dropped =y is a bug).
bad=0
while IFS= read -r line; do
  opt=${line%%=*}
  grep -qxF "$line" .config || { vmtest_log "fragment asks $line but .config has: $(grep -E "^(# )?${opt}[= ]" .config || echo unset)"; bad=1; }
done < <(grep -E '^CONFIG_[A-Za-z0-9_]+=' "$vmtest_dir/kernel.config")
while IFS= read -r line; do
  opt=$(echo "$line" | sed -n 's/^# \(CONFIG_[A-Za-z0-9_]*\) is not set$/\1/p')
  if grep -q "^$opt=" .config; then vmtest_log "note: fragment unsets $opt but .config has $(grep "^$opt=" .config)"; fi
done < <(grep -E '^# CONFIG_[A-Za-z0-9_]+ is not set' "$vmtest_dir/kernel.config")
[ "$bad" = 0 ] || vmtest_die "kernel.config options did not apply (see above)"

if [ "$config_only" = 1 ]; then
  echo "$tree/.config"
  exit 0
fi

# --- build ----------------------------------------------------------------------------
jobs=$(nproc)
vmtest_log "building bzImage with -j$jobs (log: $work/build.log; about 18 min on 2 cores)"
start=$SECONDS
if ! make -j"$jobs" bzImage > "$work/build.log" 2>&1; then
  tail -n 60 "$work/build.log" >&2
  vmtest_die "kernel build failed (log: $work/build.log)"
fi
cp arch/x86/boot/bzImage "$image.tmp.$$"
cp .config "$cache/config-$hash"
make -s kernelrelease > "$cache/bzImage-$hash.release" 2>/dev/null || true
mv -f "$image.tmp.$$" "$image"
vmtest_log "built $image ($(cat "$cache/bzImage-$hash.release" 2>/dev/null || echo '?')) in $((SECONDS - start)) s"
cd /
if [ "${FASTMAP_VMTEST_KEEP_BUILD:-0}" != 1 ]; then rm -rf "$work"; fi
echo "$image"
