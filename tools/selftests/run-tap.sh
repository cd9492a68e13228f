#!/bin/bash
# Run the two selftest programs from BIN_DIR and keep their TAP output in OUT_DIR
# (iommufd.tap, iommufd_fail_nth.tap, uname). Used inside the VM by record-real.sh.
#
#   tools/selftests/run-tap.sh BIN_DIR OUT_DIR
set -uo pipefail
bin=$1 out=$2
mkdir -p "$out"
uname -r > "$out/uname"
grep -i '^HugePages_Total' /proc/meminfo >&2
for prog in iommufd iommufd_fail_nth; do
  start=$(date +%s.%N)
  "$bin/$prog" > "$out/$prog.tap" 2>&1
  echo "$prog: exit $? in $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }') s" >&2
  tail -n 2 "$out/$prog.tap" >&2
done
exit 0
