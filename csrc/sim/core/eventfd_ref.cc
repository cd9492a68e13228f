#include "sim/core/eventfd_ref.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <new>

#include "sim/core/user_memory.h"

namespace fastmap::sim {

namespace {

// A duplicate (close-on-exec) of `fd` of process `pid` (0: this process), or -errno.
int dup_user_fd(int fd, pid_t pid) {
  if (pid == 0) {
    const int d = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    return d < 0 ? -errno : d;
  }
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) return -errno;
  const int d = static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd, fd, 0));
  const int err = errno;
  ::close(pidfd);
  return d < 0 ? -err : d;
}

bool is_eventfd(int fd) {
  char link[64];
  char target[64];
  std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  const ssize_t n = ::readlink(link, target, sizeof target - 1);
  if (n < 0) return false;
  target[n] = '\0';
  return std::strcmp(target, "anon_inode:[eventfd]") == 0;
}

}  // namespace

int EventFdRef::get(int fd, std::unique_ptr<EventFdRef>* out) noexcept {
  if (fd < 0) return -EBADF;
  const int d = dup_user_fd(fd, current_remote_mm());
  if (d < 0) return d == -ESRCH ? -EBADF : d;
  struct stat st{};
  if (!is_eventfd(d) || ::fstat(d, &st) != 0) {
    ::close(d);
    return -EINVAL;
  }
  out->reset(new (std::nothrow) EventFdRef(d, static_cast<std::uint64_t>(st.st_ino)));
  if (!*out) {
    ::close(d);
    return -ENOMEM;
  }
  return 0;
}

EventFdRef::~EventFdRef() { ::close(fd_); }

void EventFdRef::signal() noexcept {
  const std::uint64_t one = 1;
  ssize_t r;
  do {
    r = ::write(fd_, &one, sizeof one);
  } while (r < 0 && errno == EINTR);
}

}  // namespace fastmap::sim
