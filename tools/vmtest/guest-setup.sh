#!/bin/bash
# Inside the test VM, as root: bind every PCI device with the given vendor:device ids
# (default: QEMU's edu device, 1234:11e8) to vfio-pci through sysfs driver_override and
# drivers_probe. Idempotent. Prints one line per device on stdout:
#   vmtest-setup: 0000:00:03.0 1234:11e8 -> vfio-pci group=3 cdev=/dev/vfio/devices/vfio0
# Exit status: 0 when every matching device is bound (or none exists), 1 otherwise.
# run.sh calls it before the command unless --no-bind-edu. Needs an IOMMU (virtio or
# vtd); with --iommu none vfio-pci refuses the device.
#
#   tools/vmtest/guest-setup.sh [VENDOR:DEVICE ...]
set -euo pipefail

ids=("$@")
[ ${#ids[@]} -gt 0 ] || ids=(1234:11e8)
rc=0

for dev in /sys/bus/pci/devices/*; do
  [ -e "$dev/vendor" ] || continue
  read -r vendor < "$dev/vendor"
  read -r device < "$dev/device"
  id=${vendor#0x}:${device#0x}
  match=0
  for want in "${ids[@]}"; do [ "$id" = "$want" ] && match=1; done
  [ "$match" = 1 ] || continue
  bdf=${dev##*/}
  driver=""
  if [ -e "$dev/driver" ]; then driver=$(readlink "$dev/driver"); driver=${driver##*/}; fi
  if [ "$driver" != vfio-pci ]; then
    [ -n "$driver" ] && echo "$bdf" > "$dev/driver/unbind"
    echo vfio-pci > "$dev/driver_override"
    echo "$bdf" > /sys/bus/pci/drivers_probe 2>/dev/null || true
    driver=""
    if [ -e "$dev/driver" ]; then driver=$(readlink "$dev/driver"); driver=${driver##*/}; fi
  fi
  if [ "$driver" != vfio-pci ]; then
    echo "vmtest-setup: $bdf $id: could not bind to vfio-pci (driver: ${driver:-none}; is there an IOMMU?)" >&2
    rc=1
    continue
  fi
  group=none cdev=none
  if [ -e "$dev/iommu_group" ]; then group=$(readlink "$dev/iommu_group"); group=${group##*/}; fi
  for c in "$dev"/vfio-dev/vfio*; do [ -e "$c" ] && cdev=/dev/vfio/devices/${c##*/}; done
  echo "vmtest-setup: $bdf $id -> vfio-pci group=$group cdev=$cdev"
done
exit "$rc"
