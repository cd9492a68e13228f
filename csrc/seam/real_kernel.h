// The production side of the seam: real system calls on /dev/iommu and VFIO files.
#pragma once

#include "seam/kernel.h"

namespace fastmap {

class RealKernel final : public Kernel {
 public:
  int open(const char* path, int flags) noexcept override;
  int close(int fd) noexcept override;
  long ioctl(int fd, unsigned long request, void* arg) noexcept override;
  ssize_t pread(int fd, void* buf, std::size_t count, std::uint64_t offset) noexcept override;
  ssize_t pwrite(int fd, const void* buf, std::size_t count,
                 std::uint64_t offset) noexcept override;
  const char* name() const noexcept override { return "real"; }
};

}  // namespace fastmap
