#include "seam/fault_kernel.h"

namespace fastmap {

void FaultKernel::fail_nth(std::uint64_t nth, int err) noexcept {
  nth_.store(0);
  calls_.store(0);
  fired_.store(false);
  err_.store(err);
  nth_.store(nth);
}

int FaultKernel::count() noexcept {
  const std::uint64_t n = calls_.fetch_add(1) + 1;
  if (n == nth_.load()) {
    fired_.store(true);
    return -err_.load();
  }
  return 0;
}

void FaultKernel::track(int fd) noexcept {
  try {
    std::lock_guard<std::mutex> g(mu_);
    fds_.insert(fd);
  } catch (...) {
    // Bookkeeping for tests only: losing an entry must not turn into an abort.
  }
}

std::set<int> FaultKernel::open_fds() const {
  std::lock_guard<std::mutex> g(mu_);
  return fds_;
}

int FaultKernel::open(const char* path, int flags) noexcept {
  if (int e = count()) return e;
  const int fd = inner_->open(path, flags);
  if (fd >= 0) track(fd);
  return fd;
}

int FaultKernel::close(int fd) noexcept {
  {
    std::lock_guard<std::mutex> g(mu_);
    fds_.erase(fd);
  }
  return inner_->close(fd);
}

void FaultKernel::spare(unsigned long request) {
  std::lock_guard<std::mutex> g(mu_);
  spared_.insert(request);
}

long FaultKernel::ioctl(int fd, unsigned long request, void* arg) noexcept {
  bool spared;
  {
    std::lock_guard<std::mutex> g(mu_);
    spared = spared_.count(request) != 0;
  }
  if (!spared) {
    if (int e = count()) return e;
  }
  const long ret = inner_->ioctl(fd, request, arg);
  if (ret >= 0 && fd_returning_.count(request) != 0) track(static_cast<int>(ret));
  return ret;
}

ssize_t FaultKernel::pread(int fd, void* buf, std::size_t count, std::uint64_t offset) noexcept {
  return inner_->pread(fd, buf, count, offset);
}

ssize_t FaultKernel::pwrite(int fd, const void* buf, std::size_t count,
                            std::uint64_t offset) noexcept {
  return inner_->pwrite(fd, buf, count, offset);
}

}  // namespace fastmap
