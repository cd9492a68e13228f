// vfio's view of one device bound to vfio-pci (the kernel's struct vfio_device) and of an
// IOMMU group (struct vfio_group): the state every open file of them shares.
//
// Lock order: VfioGroup::mu, then Container's lock, then VfioDevice::mu.
#pragma once

#include <memory>
#include <mutex>
#include <vector>

#include "sim/vfio/irqs.h"
#include "sim/vfio/migration.h"
#include "sim/vfio/pci_device.h"

namespace fastmap::sim::vfio {

class Container;
struct VfioGroup;

// The char major of /dev/vfio/devices/vfioN (the kernel hands vfio a dynamic major; the
// simulator always uses this one). The minor is N.
inline constexpr unsigned kVfioDevMajor = 511;
// The char major of the group nodes /dev/vfio/N (also dynamic in the kernel); the minor is
// the group's number.
inline constexpr unsigned kVfioGroupMajor = 510;

struct VfioDevice {
  explicit VfioDevice(std::shared_ptr<PciDevice> p) : pci(std::move(p)), irqs(*pci), mig(pci) {
    pci->set_irq_sink(&irqs);
  }
  ~VfioDevice() { pci->set_irq_sink(nullptr); }
  VfioDevice(const VfioDevice&) = delete;
  VfioDevice& operator=(const VfioDevice&) = delete;

  std::shared_ptr<PciDevice> pci;
  VfioIrqs irqs;  // vfio-pci's interrupt state; the device's IrqSink
  Migration mig;  // the migration driver's state (for models that migrate)
  unsigned index = 0;         // N of /dev/vfio/devices/vfioN
  VfioGroup* group = nullptr;  // owned by the Machine, which outlives every file
  std::mutex mu;              // the kernel's dev_set->lock
  // Opens across both paths (a cdev bound to an iommufd, or fds from the group). vfio-pci
  // enables the function on the first and disables it on the last (it cannot reset edu).
  int open_count = 0;
};

struct VfioGroup {
  int id = 0;
  std::vector<std::shared_ptr<VfioDevice>> devices;
  std::mutex mu;  // the kernel's group_lock
  bool opened = false;           // /dev/vfio/N is open (only one open at a time)
  int cdev_device_open_cnt = 0;  // devices of the group bound through their cdev
  std::shared_ptr<Container> container;
  // 1 for the group itself once a container is set, plus one per device opened from it;
  // UNSET_CONTAINER wants exactly 1.
  int container_users = 0;
};

}  // namespace fastmap::sim::vfio
