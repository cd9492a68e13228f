// The ioctl seam: the only way fastmap's core talks to a kernel.
//
// Two implementations exist: RealKernel (the system calls) and sim::SimKernel (the embedded
// simulated kernel). Everything above the seam (engine, lifecycle, dirty tracking) is written
// once against this interface. Calls never throw: like the system calls they model, they
// return a non-negative result or -errno.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace fastmap {

class Kernel {
 public:
  virtual ~Kernel() = default;

  // open(2): a new fd, or -errno.
  virtual int open(const char* path, int flags) noexcept = 0;
  // close(2): 0 or -errno.
  virtual int close(int fd) noexcept = 0;
  // ioctl(2): the ioctl's non-negative return value, or -errno. `arg` is a pointer to the
  // argument struct, or an integer cast to a pointer for by-value ioctls.
  virtual long ioctl(int fd, unsigned long request, void* arg) noexcept = 0;
  // pread(2)/pwrite(2), used for VFIO region access: bytes moved, or -errno.
  virtual ssize_t pread(int fd, void* buf, std::size_t count, std::uint64_t offset) noexcept = 0;
  virtual ssize_t pwrite(int fd, const void* buf, std::size_t count,
                         std::uint64_t offset) noexcept = 0;

  // "real" or "sim": which kernel answers.
  virtual const char* name() const noexcept = 0;
};

}  // namespace fastmap
