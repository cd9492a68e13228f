// An open file description in the simulated kernel (/dev/iommu, a VFIO cdev, a Type1
// container or group). Methods mirror file_operations and return -errno on failure.
#pragma once

#include <fcntl.h>
#include <sys/types.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>

namespace fastmap::sim {

class File {
 public:
  virtual ~File() = default;  // the last reference going away is release()
  // The open file's access mode (f_mode's FMODE_READ/FMODE_WRITE), from open(2)'s O_ACCMODE;
  // files that ioctls hand out are read-write. The VFS checks it before any handler runs.
  void set_access_mode(int accmode) noexcept {
    readable_ = accmode == O_RDONLY || accmode == O_RDWR;
    writable_ = accmode == O_WRONLY || accmode == O_RDWR;
  }
  bool readable() const noexcept { return readable_; }
  bool writable() const noexcept { return writable_; }
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

 private:
  bool readable_ = true;
  bool writable_ = true;
};

}  // namespace fastmap::sim
