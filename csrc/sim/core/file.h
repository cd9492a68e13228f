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
  // read(2)/write(2) without an offset: a file without .read/.write gives EINVAL.
  virtual ssize_t read(void* /*buf*/, std::size_t /*count*/) noexcept { return -EINVAL; }
  virtual ssize_t write(const void* /*buf*/, std::size_t /*count*/) noexcept { return -EINVAL; }
  // mmap(2): a file without .mmap gives ENODEV. The mapping's address goes to *out.
  virtual int mmap(void* /*addr*/, std::size_t /*length*/, int /*prot*/, int /*flags*/,
                   std::uint64_t /*offset*/, void** /*out*/) noexcept {
    return -ENODEV;
  }
  // fstat(2): the char device (major, minor) the file was opened from; false for an
  // anonymous inode (fds that ioctls hand out).
  virtual bool chardev(unsigned* /*major*/, unsigned* /*minor*/) const noexcept {
    return false;
  }
};

}  // namespace fastmap::sim
