// The embedded simulated kernel: the other side of the ioctl seam.
//
// The top of csrc/sim: the core (fd table, device nodes, accounting) with the subsystems
// plugged in. /dev/iommu is registered at construction; the VFIO side registers
// /dev/vfio/vfio, /dev/vfio/N and /dev/vfio/devices/vfioN as it creates devices.
// Thread-safe.
#pragma once

#include <memory>
#include <string>

#include "sim/core/config.h"
#include "sim/core/kernel_core.h"

namespace fastmap::sim {

namespace vfio {
class Machine;
}

class SimKernel final : public KernelCore {
 public:
  explicit SimKernel(SimConfig config = {});
  ~SimKernel() override;

  // The simulated machine's PCI devices behind VFIO (empty until devices are added).
  vfio::Machine& machine() noexcept { return *machine_; }

  // stat(2) of a device node by path: 1 and its char device (major, minor), or -ENOENT.
  int node_chardev(const std::string& path, unsigned* major, unsigned* minor) const;

 private:
  std::unique_ptr<vfio::Machine> machine_;
};

}  // namespace fastmap::sim
