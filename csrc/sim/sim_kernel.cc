#include "sim/sim_kernel.h"

#include "sim/iommufd/device_api.h"
#include "sim/vfio/machine.h"

namespace fastmap::sim {

SimKernel::SimKernel(SimConfig config)
    : KernelCore(config), machine_(std::make_unique<vfio::Machine>(*this)) {
  register_node("/dev/iommu", [](KernelCore& k, int, int*) { return iommufd_open(k); });
}

// Every file goes before the machine its device files point into, as at process exit.
SimKernel::~SimKernel() { close_all(); }

}  // namespace fastmap::sim
