#include "sim/vfio/machine_report.h"

#include <cerrno>

#include "sim/vfio/edu.h"

namespace fastmap::sim::vfio {

int find_pci_device(const Machine& m, const std::string& bdf, std::shared_ptr<PciDevice>* out) {
  *out = m.pci_device(bdf);
  return *out ? 0 : -ENODEV;
}

int device_faults(const Machine& m, const std::string& bdf, bool clear,
                  std::vector<DeviceDmaFault>* out) {
  std::shared_ptr<PciDevice> dev;
  if (int rc = find_pci_device(m, bdf, &dev)) return rc;
  *out = clear ? dev->take_faults() : dev->faults();
  return 0;
}

int pci_command(const Machine& m, const std::string& bdf, std::uint16_t* out) {
  std::shared_ptr<PciDevice> dev;
  if (int rc = find_pci_device(m, bdf, &dev)) return rc;
  *out = dev->command();
  return 0;
}

int edu_buffer(const Machine& m, const std::string& bdf, std::vector<std::uint8_t>* out) {
  std::shared_ptr<PciDevice> dev;
  if (int rc = find_pci_device(m, bdf, &dev)) return rc;
  auto edu = std::dynamic_pointer_cast<EduDevice>(dev);
  if (!edu) return -EINVAL;
  *out = edu->dma_buffer();
  return 0;
}

}  // namespace fastmap::sim::vfio
