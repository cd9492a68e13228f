// FaultKernel: a Kernel that forwards to another one and fails a chosen call, like the
// kernel's fail_nth (fault injection at the Nth fallible step of one operation).
//
// Every open and ioctl is counted, whoever makes it: the Python layer, the C++ batch engine,
// its worker threads. `fail_nth(n, err)` makes the nth counted call from now return -err
// without reaching the inner kernel. Tests drive an operation with n = 1, 2, ... until it
// succeeds without the fault firing, checking after each failure that nothing changed.
// It also tracks the fds opened through it (open, and the ioctls named as returning a new
// fd, such as VFIO_GROUP_GET_DEVICE_FD) and not closed.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>

#include "seam/kernel.h"

namespace fastmap {

class FaultKernel final : public Kernel {
 public:
  FaultKernel(std::shared_ptr<Kernel> inner, std::set<unsigned long> fd_returning)
      : inner_(std::move(inner)), fd_returning_(std::move(fd_returning)) {}

  // Fail the nth open/ioctl from now with -err (n = 0: fail nothing); resets the count.
  void fail_nth(std::uint64_t nth, int err) noexcept;
  // Never count (so never fail) ioctl `request`: for calls the kernel has no way to fail
  // for a correct caller (IOMMU_DESTROY of an unused object allocates nothing).
  void spare(unsigned long request);
  // Calls counted since the last fail_nth; whether its fault fired.
  std::uint64_t calls() const noexcept { return calls_.load(); }
  bool fired() const noexcept { return fired_.load(); }
  // The fds opened through this kernel and not closed yet.
  std::set<int> open_fds() const;
  const std::shared_ptr<Kernel>& inner() const noexcept { return inner_; }

  int open(const char* path, int flags) noexcept override;
  int close(int fd) noexcept override;
  long ioctl(int fd, unsigned long request, void* arg) noexcept override;
  ssize_t pread(int fd, void* buf, std::size_t count, std::uint64_t offset) noexcept override;
  ssize_t pwrite(int fd, const void* buf, std::size_t count,
                 std::uint64_t offset) noexcept override;
  const char* name() const noexcept override { return inner_->name(); }

 private:
  // Count one call; -err if it is the one to fail, else 0.
  int count() noexcept;
  void track(int fd) noexcept;

  std::shared_ptr<Kernel> inner_;
  const std::set<unsigned long> fd_returning_;
  std::atomic<std::uint64_t> calls_{0};
  std::atomic<std::uint64_t> nth_{0};
  std::atomic<int> err_{0};
  std::atomic<bool> fired_{false};
  mutable std::mutex mu_;  // fds_, spared_
  std::set<int> fds_;
  std::set<unsigned long> spared_;
};

}  // namespace fastmap
