#include "seam/real_kernel.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>

namespace fastmap {

namespace {
// EINTR is retried: none of the calls fastmap makes has a partial effect when interrupted.
template <class F>
auto retry(F f) noexcept {
  decltype(f()) r;
  do {
    r = f();
  } while (r < 0 && errno == EINTR);
  return r < 0 ? static_cast<decltype(r)>(-errno) : r;
}
}  // namespace

int RealKernel::open(const char* path, int flags) noexcept {
  return retry([&] { return ::open(path, flags | O_CLOEXEC); });
}

int RealKernel::close(int fd) noexcept {
  // close(2) must not be retried on EINTR: the fd is gone either way.
  return ::close(fd) < 0 ? -errno : 0;
}

long RealKernel::ioctl(int fd, unsigned long request, void* arg) noexcept {
  return retry([&] { return static_cast<long>(::ioctl(fd, request, arg)); });
}

ssize_t RealKernel::pread(int fd, void* buf, std::size_t count, std::uint64_t offset) noexcept {
  return retry([&] { return ::pread(fd, buf, count, static_cast<off_t>(offset)); });
}

ssize_t RealKernel::pwrite(int fd, const void* buf, std::size_t count,
                           std::uint64_t offset) noexcept {
  return retry([&] { return ::pwrite(fd, buf, count, static_cast<off_t>(offset)); });
}

}  // namespace fastmap
