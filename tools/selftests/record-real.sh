#!/bin/bash
# Run the iommufd selftests on the real Linux 6.12 kernel in the VM and record each test's
# TAP outcome in tests/selftests/real_<version>.json, the reference the simulator's run is
# compared with (tests/selftests/test_kernel_selftests.py). Run it under the VM lock:
#
#   flock /work/vm.lock tools/selftests/record-real.sh
#
# The guest boots with --iommu none (iommufd and the mock domain only) and 256 huge pages
# reserved on its command line (hugepages=256), which the hugepage variants map.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"
py=${PYTHON:-$repo/.venv/bin/python}
bin=$("$here/build.sh")
out=$repo/build/selftests/real
rm -rf "$out"
mkdir -p "$out"
"$repo/tools/vmtest/run.sh" --iommu none --mem 2G --append hugepages=256 --timeout 1800 \
  --out "$out/vm" -- "$here/run-tap.sh" "$bin" "$out"
version=$(cut -d- -f1 < "$out/uname")
"$py" -m tests.selftests.tap record --kernel "$version" \
  --iommufd "$out/iommufd.tap" --fail-nth "$out/iommufd_fail_nth.tap" \
  > "tests/selftests/real_$version.json"
echo "tests/selftests/real_$version.json"
