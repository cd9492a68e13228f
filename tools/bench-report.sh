#!/usr/bin/env bash
# Regenerates docs/benchmarks.md and its figures: the same `fastmap bench` runs on the
# simulated kernel (here) and on the real Linux 6.12 kernel (in the VM tier, tools/vmtest),
# each writing JSON, then rendered side by side by fastmap._tools.bench_report.
#
#   tools/bench-report.sh [OUT_DIR]        # default OUT_DIR: build/bench-report
#
# FASTMAP_VM_WRAP, if set, is put before tools/vmtest/run.sh (e.g. "flock /some/lock" on a
# machine where VMs must not run side by side). The sizes below keep the VM run (software
# emulation, ~14x slower than the host) to a few minutes. The guest uses emulated VT-d: with
# virtio-iommu, an IOAS with the edu device attached reports one usable IOVA ([0, 0]) on
# this 6.12 guest, so nothing can be mapped with a domain there.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/bench-report}
py=${PYTHON:-.venv/bin/python}

# One list of runs for both kernels: "name|bench options".
runs=(
  "pinned-4k|pinned --page-size 4KiB --entries 5000"
  "pinned-2m|pinned --page-size 2MiB --entries 500"
  "pinned-1g|pinned --page-size 1GiB --entries 8"
  "map|map --entries 10000"
  "batch|batch --entries 10000"
  "threads|threads --entries 20000 --threads 2"
)

if [[ ${1:-} == --guest ]]; then
  # In the VM: 1 GiB pages are reserved at boot; where that failed, try once more at run time.
  dir=$2
  f=/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages
  [[ -w $f && $(cat "$f") == 0 ]] && echo 1 > "$f" 2>/dev/null || true
  grep -i '^HugePages_\|^Hugetlb' /proc/meminfo
  kind=real
else
  dir=$out/sim
  kind=sim
fi

bench() {  # bench DIR KIND
  mkdir -p "$1"
  for run in "${runs[@]}"; do
    name=${run%%|*}
    # shellcheck disable=SC2086  # the options are words
    "$py" -m fastmap.cli --kernel "$2" bench ${run#*|} --repeat 5 --no-progress \
      --json "$1/$name.json"
  done
}

if [[ ${1:-} == --guest ]]; then
  bench "$dir" real
  exit 0
fi

rm -rf "$out" && mkdir -p "$out"
bench "$out/sim" sim
# shellcheck disable=SC2086  # FASTMAP_VM_WRAP is a command and its arguments
${FASTMAP_VM_WRAP:-} tools/vmtest/run.sh --iommu vtd --mem 4G \
  --append "hugepagesz=1G hugepages=1" --timeout 1800 \
  -- tools/bench-report.sh --guest "$PWD/$out/real"
# The measurements are kept beside the report, so it can be re-rendered (and checked).
rm -rf docs/benchmarks-data && mkdir -p docs/benchmarks-data
cp -r "$out/sim" "$out/real" docs/benchmarks-data/
"$py" -m fastmap._tools.bench_report docs/benchmarks-data/sim docs/benchmarks-data/real \
  docs/benchmarks.md
echo "wrote docs/benchmarks.md and docs/benchmarks-{sim,real}.png"
