// An open file description in the simulated kernel (/dev/iommu, a VFIO cdev, a Type1
// container or group). Methods mirror file_operations and return -errno on failure.
#pragma once

#include <sys/types.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>

namespace fastmap::sim {

class File {
 public:
  virtual ~File() = default;  // the last reference going away is release()
  virtual long ioctl(unsigned long request, void* arg) noexcept = 0;
  virtual ssize_t pread(void* /*buf*/, std::size_t /*count*/, std::uint64_t /*off*/) noexcept {
    return -EINVAL;
  }
  virtual ssize_t pwrite(const void* /*buf*/, std::size_t /*count*/,
                         std::uint64_t /*off*/) noexcept {
    return -EINVAL;
  }
};

}  // namespace fastmap::sim
