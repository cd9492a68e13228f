#include "sim/sim_chardev.h"

#include <cerrno>
#include <memory>

#include "sim/vfio/device_file.h"

namespace fastmap::sim {

int chardev_of(const SimKernel& k, int fd, std::optional<std::pair<unsigned, unsigned>>* out) {
  auto file = k.fget(fd);
  if (!file) return -EBADF;
  auto dev = std::dynamic_pointer_cast<vfio::VfioDeviceFile>(file);
  unsigned major = 0, minor = 0;
  out->reset();
  if (dev && dev->cdev_devt(&major, &minor)) out->emplace(major, minor);
  return 0;
}

}  // namespace fastmap::sim
