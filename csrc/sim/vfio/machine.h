// The simulated machine's PCI side: devices plugged in and bound to vfio-pci, their IOMMU
// groups, the VFIO device nodes and the sysfs entries a host shows for them.
//
// For each device the Machine registers /dev/vfio/devices/vfioN (N in creation order from
// 0), /dev/vfio/<group> for its IOMMU group and /dev/vfio/vfio (the Type1 container), and
// fills sysfs:
//   /sys/bus/pci/devices/<bdf> -> ../../../devices/pci0000:00/<bdf>
//   /sys/devices/pci0000:00/<bdf>/{vendor,device,class,subsystem_vendor,subsystem_device}
//   /sys/devices/pci0000:00/<bdf>/iommu_group -> ../../../kernel/iommu_groups/<N>
//   /sys/devices/pci0000:00/<bdf>/driver -> ../../../bus/pci/drivers/vfio-pci
//   /sys/devices/pci0000:00/<bdf>/vfio-dev/vfio<N>/dev  ("511:<N>", a dynamic major)
//   /sys/kernel/iommu_groups/<N>/devices/<bdf> -> ../../../../devices/pci0000:00/<bdf>
//   /sys/bus/pci/drivers/vfio-pci/<bdf> -> ../../../../devices/pci0000:00/<bdf>
//   /sys/class/iommu/dmar0 -> ../../devices/virtual/iommu/dmar0  (once a VT-d device exists)
// A new KernelCore has no devices; they are added at run time.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "sim/iommu/iommu_model.h"
#include "sim/vfio/pci_device.h"
#include "sim/vfio/sysfs.h"
#include "sim/vfio/vfio_device.h"

namespace fastmap::sim {
class KernelCore;
}

namespace fastmap::sim::vfio {

struct PciDeviceSpec {
  std::string bdf;  // "0000:00:03.0"; empty: the next free slot on bus 0 from 00:03.0
  std::uint16_t vendor = 0x1234;
  std::uint16_t device = 0x11e8;
  int group = -1;  // IOMMU group number; -1: a new group of its own
  IommuModel iommu = IommuModel::vtd(false);
  std::string kind = "edu";  // the device model
};

struct PciDeviceInfo {
  std::string bdf;
  unsigned index = 0;  // N of vfioN
  std::string cdev;    // /dev/vfio/devices/vfioN
  int group = 0;
  std::string group_path;  // /dev/vfio/<group>
  std::string sysfs;       // /sys/bus/pci/devices/<bdf>
};

class Machine {
 public:
  explicit Machine(KernelCore& kernel);
  ~Machine();
  Machine(const Machine&) = delete;
  Machine& operator=(const Machine&) = delete;

  // Plug in a device and bind it to vfio-pci. 0, or -EINVAL (malformed BDF, unknown kind,
  // a group whose devices sit behind a different IOMMU), -EEXIST (BDF taken), -ENOSPC (no
  // free slot).
  int add_pci_device(const PciDeviceSpec& spec, PciDeviceInfo* out);
  std::vector<PciDeviceInfo> devices() const;
  // The device model behind a BDF, or nullptr.
  std::shared_ptr<PciDevice> pci_device(const std::string& bdf) const;

  // The sysfs view (see the file comment). 0 or -errno.
  int list_dir(const std::string& path, std::vector<std::string>* out) const;
  int read_file(const std::string& path, std::string* out) const;
  int read_link(const std::string& path, std::string* out) const;
  int sysfs_type(const std::string& path) const;  // SysfsTree::type_of
  int sysfs_realpath(const std::string& path, std::string* out) const;

 private:
  struct Entry {
    PciDeviceInfo info;
    std::shared_ptr<VfioDevice> dev;
  };
  static bool parse_bdf(const std::string& in, std::string* canonical);
  std::string next_free_bdf() const;
  void publish_sysfs(const Entry& e);

  KernelCore& kernel_;
  mutable std::mutex mu_;
  std::vector<Entry> entries_;
  std::map<int, std::shared_ptr<VfioGroup>> groups_;
  bool container_node_ = false;
  bool dmar_ = false;
  SysfsTree sysfs_;
};

}  // namespace fastmap::sim::vfio
