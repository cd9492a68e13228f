#include "sim/sim_kernel.h"

#include <cerrno>
#include <string>

#include "sim/core/fail_nth.h"
#include "sim/iommufd/device_api.h"
#include "sim/vfio/machine.h"
#include "sim/vfio/vfio_device.h"

namespace fastmap::sim {

SimKernel::SimKernel(SimConfig config)
    : KernelCore(config), machine_(std::make_unique<vfio::Machine>(*this)) {
  register_node("/dev/iommu", [](KernelCore& k, int, int* err) -> std::shared_ptr<File> {
    if (should_fail()) {  // iommufd_fops_open's kzalloc of the context
      *err = -ENOMEM;
      return nullptr;
    }
    return iommufd_open(k);
  });
}

int SimKernel::node_chardev(const std::string& path, unsigned* major, unsigned* minor) const {
  if (!has_node(path)) return -ENOENT;
  static const std::string kGroup = "/dev/vfio/", kCdev = "/dev/vfio/devices/vfio";
  if (path == "/dev/iommu") {
    *major = 10;
    *minor = kIommufdMinor;
  } else if (path == "/dev/vfio/vfio") {
    *major = 10;
    *minor = 196;  // VFIO_MINOR
  } else if (path.compare(0, kCdev.size(), kCdev) == 0) {
    *major = vfio::kVfioDevMajor;
    *minor = static_cast<unsigned>(std::stoul(path.substr(kCdev.size())));
  } else {
    *major = vfio::kVfioGroupMajor;
    *minor = static_cast<unsigned>(std::stoul(path.substr(kGroup.size())));
  }
  return 1;
}

// Every file goes before the machine its device files point into, as at process exit.
SimKernel::~SimKernel() { close_all(); }

}  // namespace fastmap::sim
