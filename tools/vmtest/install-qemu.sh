#!/bin/bash
# Install QEMU >= 10 (qemu-system-x86_64) for the fastmap VM test tier. Run as root.
#
#   tools/vmtest/install-qemu.sh
#
# Idempotent: does nothing when qemu-system-x86_64 already reports major version >= 10.
# Debian 13 (trixie) and later: the distribution's own qemu-system-x86.
# Debian 12 (bookworm): its QEMU 7.2 is too old, so the bookworm-backports suite is added
# (same archive URI as the machine's existing Debian source, component main) and QEMU,
# its data and SeaBIOS come from there.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_major=10

qemu_major() {
  local v=""
  if command -v qemu-system-x86_64 >/dev/null 2>&1; then
    v=$(qemu-system-x86_64 --version 2>/dev/null | sed -n 's/.*version \([0-9][0-9]*\)\..*/\1/p' | head -n1)
  fi
  echo "${v:-0}"
}

if [ "$(qemu_major)" -ge "$need_major" ]; then
  vmtest_log "$(qemu-system-x86_64 --version | head -n1) is already installed"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || vmtest_die "install-qemu.sh must run as root (it uses apt-get)"

export DEBIAN_FRONTEND=noninteractive
codename=$(vmtest_codename)
case "$codename" in
  bookworm)
    vmtest_ensure_backports >/dev/null
    apt-get update
    apt-get install -y --no-install-recommends \
      qemu-system-x86/bookworm-backports qemu-system-common/bookworm-backports \
      qemu-system-data/bookworm-backports seabios/bookworm-backports
    ;;
  *)
    apt-get update
    apt-get install -y --no-install-recommends qemu-system-x86
    ;;
esac

have=$(qemu_major)
[ "$have" -ge "$need_major" ] || vmtest_die "installed QEMU major $have, need >= $need_major"
vmtest_log "$(qemu-system-x86_64 --version | head -n1)"
