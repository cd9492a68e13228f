#!/bin/bash
# Print the path of the kernel (bzImage) the VM tests boot; build one if none is found.
#
#   tools/vmtest/kernel.sh [--no-build]
#
# Order: $FASTMAP_VMTEST_KERNEL if set; else <repo>/../shared/vmtest/bzImage when its
# sha256 matches bzImage.sha256 beside it; else the cache
# (${FASTMAP_VMTEST_CACHE:-$HOME/.cache/fastmap-vmtest}/bzImage-<hash of kernel.config>);
# else build-kernel.sh builds it into the cache (about 18 min), unless --no-build
# (then exit 3).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

build=1
case "${1:-}" in
  --no-build) build=0 ;;
  "") ;;
  *) vmtest_die "kernel.sh: unknown option $1" ;;
esac

if [ -n "${FASTMAP_VMTEST_KERNEL:-}" ]; then
  [ -r "$FASTMAP_VMTEST_KERNEL" ] || vmtest_die "FASTMAP_VMTEST_KERNEL=$FASTMAP_VMTEST_KERNEL is not readable"
  echo "$FASTMAP_VMTEST_KERNEL"
  exit 0
fi

shared=$(vmtest_repo_root)/../shared/vmtest
if [ -r "$shared/bzImage" ] && [ -r "$shared/bzImage.sha256" ]; then
  if (cd "$shared" && sha256sum --check --status bzImage.sha256); then
    (cd "$shared" && echo "$PWD/bzImage")
    exit 0
  fi
  vmtest_log "ignoring $shared/bzImage: its sha256 does not match bzImage.sha256"
fi

cached=$(vmtest_cache_dir)/bzImage-$(vmtest_config_hash)
if [ -s "$cached" ]; then
  echo "$cached"
  exit 0
fi

if [ "$build" = 0 ]; then
  vmtest_log "no kernel found (set FASTMAP_VMTEST_KERNEL or run tools/vmtest/build-kernel.sh)"
  exit 3
fi
vmtest_log "no prebuilt kernel found; building one (about 18 min on 2 cores)"
exec "$vmtest_dir/build-kernel.sh"
