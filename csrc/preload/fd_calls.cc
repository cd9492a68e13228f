// The fd calls, for fds that are simulated files. Each answers from the simulator (or, for
// fd-table calls, moves the reserved fd and the simulator's table together); other fds go
// to the host untouched. Calls the simulator does not model get the kernel's errno for a
// char device without that file operation, never the host's /dev/null behaviour.
#include <fcntl.h>
#include <linux/close_range.h>
#include <stdarg.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

#include <climits>
#include <cerrno>
#include <cstring>

#include "fastmap_sim.h"
#include "preload/fail_nth.h"
#include "preload/preload.h"
#include "preload/real.h"
#include "preload/stat_fill.h"
#include "preload/trace.h"

using namespace fastmap::preload;

namespace {

long rw(Op op, int fd, const void* buf, size_t n, off_t off = 0) {
  Call c{op, fd, reinterpret_cast<std::uint64_t>(buf), n, static_cast<std::uint64_t>(off), 0,
         nullptr};
  return sim_call(c).ret;
}

// readv/writev family: the kernel loops over .read/.write for files without read_iter.
ssize_t vec(Op op, int fd, const struct iovec* iov, int cnt, off_t off, bool positioned) {
  if (cnt < 0 || cnt > IOV_MAX) return set_errno(-EINVAL);
  ssize_t total = 0;
  for (int i = 0; i < cnt; ++i) {
    long r = positioned ? rw(op, fd, iov[i].iov_base, iov[i].iov_len, off + total)
                        : rw(op, fd, iov[i].iov_base, iov[i].iov_len);
    if (r < 0) return total ? total : set_errno(r);
    total += r;
    if (static_cast<size_t>(r) < iov[i].iov_len) break;
  }
  return total;
}

// After a host dup of a simulated fd: the new number joins the simulator's table.
int sim_dup_result(int oldfd, int newfd, bool cloexec) {
  if (newfd < 0) return newfd;
  Call c{Op::kDupTo, oldfd, static_cast<std::uint64_t>(newfd), 0, 0, 0, nullptr};
  long r = sim_call(c).ret;
  if (r < 0 || newfd >= kMaxFd) {
    FASTMAP_REAL("close", int (*)(int))(newfd);
    return static_cast<int>(set_errno(r < 0 ? r : -EMFILE));
  }
  FASTMAP_REAL("fcntl", int (*)(int, int, ...))(newfd, F_SETFD, FD_CLOEXEC);
  mark_simfd(newfd, cloexec);
  return newfd;
}

// A host fd number about to be reused by dup2/dup3: if it was simulated, close that file.
void drop_sim(int fd) {
  if (!is_simfd(fd)) return;
  Call c{Op::kClose, fd, 0, 0, 0, 0, nullptr};
  sim_call(c);
  unmark_simfd(fd);
}

int dup_to(int oldfd, int newfd, int flags, bool is_dup2) {
  if (is_dup2 && oldfd == newfd) return FASTMAP_REAL("dup2", int (*)(int, int))(oldfd, newfd);
  const int r = FASTMAP_REAL("dup3", int (*)(int, int, int))(oldfd, newfd, flags);
  if (r < 0) return r;
  drop_sim(newfd);
  if (is_simfd(oldfd)) return sim_dup_result(oldfd, newfd, flags & O_CLOEXEC);
  return r;
}

}  // namespace

// The interposed entry points are this library's exported interface.
#pragma GCC visibility push(default)
extern "C" {

int close(int fd) {
  if (fd >= 0 && fd == trace_fd()) return errno = EBADF, -1;  // not the program's fd
  failnth_forget(fd);
  if (is_simfd(fd)) drop_sim(fd);
  return FASTMAP_REAL("close", int (*)(int))(fd);
}

int close_range(unsigned first, unsigned last, int flags) noexcept {
  const unsigned end = last < static_cast<unsigned>(kMaxFd) ? last : kMaxFd - 1;
  for (unsigned fd = first; fd <= end && first <= last; ++fd) {
    if (!is_simfd(static_cast<int>(fd))) continue;
    if (flags & CLOSE_RANGE_CLOEXEC) {
      set_simfd_cloexec(static_cast<int>(fd), true);
    } else {
      drop_sim(static_cast<int>(fd));
    }
  }
  const auto real = FASTMAP_REAL("close_range", int (*)(unsigned, unsigned, int));
  const int t = trace_fd();
  if (t < 0 || first > last || static_cast<unsigned>(t) < first ||
      static_cast<unsigned>(t) > last) {
    return real(first, last, flags);
  }
  // Around the trace file, which is not the program's.
  const unsigned tu = static_cast<unsigned>(t);
  if (tu > first && real(first, tu - 1, flags) != 0) return -1;
  return tu < last ? real(tu + 1, last, flags) : 0;
}

int dup(int fd) noexcept {
  const int r = FASTMAP_REAL("dup", int (*)(int))(fd);
  if (r >= 0 && is_simfd(fd)) return sim_dup_result(fd, r, false);
  return r;
}

int dup2(int oldfd, int newfd) noexcept { return dup_to(oldfd, newfd, 0, true); }
int dup3(int oldfd, int newfd, int flags) noexcept { return dup_to(oldfd, newfd, flags, false); }

static int fcntl_impl(const char* name, int fd, int cmd, long arg) {
  auto real = FASTMAP_REAL("fcntl", int (*)(int, int, ...));
  (void)name;
  if (!is_simfd(fd)) return real(fd, cmd, arg);
  switch (cmd) {
    case F_DUPFD:
    case F_DUPFD_CLOEXEC: {
      const int r = real(fd, F_DUPFD_CLOEXEC, arg);
      return sim_dup_result(fd, r, cmd == F_DUPFD_CLOEXEC);
    }
    case F_GETFD:
      return simfd_cloexec(fd) ? FD_CLOEXEC : 0;
    case F_SETFD:
      set_simfd_cloexec(fd, arg & FD_CLOEXEC);
      return 0;
    default:
      return real(fd, cmd, arg);  // status flags and locks: the reserved fd's open file
  }
}

int fcntl(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  long arg = va_arg(ap, long);
  va_end(ap);
  return fcntl_impl("fcntl", fd, cmd, arg);
}

int fcntl64(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  long arg = va_arg(ap, long);
  va_end(ap);
  return fcntl_impl("fcntl64", fd, cmd, arg);
}

int ioctl(int fd, unsigned long request, ...) noexcept {
  va_list ap;
  va_start(ap, request);
  void* arg = va_arg(ap, void*);
  va_end(ap);
  auto real = FASTMAP_REAL("ioctl", int (*)(int, unsigned long, ...));
  if (!is_simfd(fd)) return real(fd, request, arg);
  // The VFS answers these before any driver sees them (do_vfs_ioctl).
  switch (request) {
    case FIOCLEX:
    case FIONCLEX:
      set_simfd_cloexec(fd, request == FIOCLEX);
      return 0;
    case FIONBIO:
    case FIOASYNC:
      return real(fd, request, arg);  // file status flags: the reserved fd's open file
    default:
      break;
  }
  Call c{Op::kIoctl, fd, request, reinterpret_cast<std::uint64_t>(arg), 0, 0, nullptr};
  return static_cast<int>(set_errno(sim_call(c).ret));
}

ssize_t read(int fd, void* buf, size_t n) {
  if (is_failnth_fd(fd)) return set_errno(failnth_read(fd, buf, n, -1));
  if (is_simfd(fd)) return set_errno(rw(Op::kRead, fd, buf, n));
  return FASTMAP_REAL("read", ssize_t (*)(int, void*, size_t))(fd, buf, n);
}

ssize_t __read_chk(int fd, void* buf, size_t n, size_t) { return read(fd, buf, n); }

ssize_t write(int fd, const void* buf, size_t n) {
  if (is_failnth_fd(fd)) return set_errno(failnth_write(fd, buf, n));
  if (is_simfd(fd)) return set_errno(rw(Op::kWrite, fd, buf, n));
  return FASTMAP_REAL("write", ssize_t (*)(int, const void*, size_t))(fd, buf, n);
}

ssize_t pread(int fd, void* buf, size_t n, off_t off) {
  if (is_failnth_fd(fd)) return set_errno(off < 0 ? -EINVAL : failnth_read(fd, buf, n, off));
  if (is_simfd(fd)) return set_errno(rw(Op::kPread, fd, buf, n, off));
  return FASTMAP_REAL("pread", ssize_t (*)(int, void*, size_t, off_t))(fd, buf, n, off);
}
ssize_t pread64(int fd, void* buf, size_t n, off64_t off) { return pread(fd, buf, n, off); }
ssize_t __pread_chk(int fd, void* buf, size_t n, off_t off, size_t) { return pread(fd, buf, n, off); }
ssize_t __pread64_chk(int fd, void* buf, size_t n, off64_t off, size_t) {
  return pread(fd, buf, n, off);
}

ssize_t pwrite(int fd, const void* buf, size_t n, off_t off) {
  if (is_failnth_fd(fd)) return set_errno(off < 0 ? -EINVAL : failnth_write(fd, buf, n));
  if (is_simfd(fd)) return set_errno(rw(Op::kPwrite, fd, buf, n, off));
  return FASTMAP_REAL("pwrite", ssize_t (*)(int, const void*, size_t, off_t))(fd, buf, n, off);
}
ssize_t pwrite64(int fd, const void* buf, size_t n, off64_t off) { return pwrite(fd, buf, n, off); }

ssize_t readv(int fd, const struct iovec* iov, int cnt) {
  if (is_simfd(fd)) return vec(Op::kRead, fd, iov, cnt, 0, false);
  return FASTMAP_REAL("readv", ssize_t (*)(int, const struct iovec*, int))(fd, iov, cnt);
}
ssize_t writev(int fd, const struct iovec* iov, int cnt) {
  if (is_simfd(fd)) return vec(Op::kWrite, fd, iov, cnt, 0, false);
  return FASTMAP_REAL("writev", ssize_t (*)(int, const struct iovec*, int))(fd, iov, cnt);
}
ssize_t preadv(int fd, const struct iovec* iov, int cnt, off_t off) {
  if (is_simfd(fd)) return vec(Op::kPread, fd, iov, cnt, off, true);
  return FASTMAP_REAL("preadv", ssize_t (*)(int, const struct iovec*, int, off_t))(fd, iov, cnt,
                                                                                    off);
}
ssize_t preadv64(int fd, const struct iovec* iov, int cnt, off64_t off) {
  return preadv(fd, iov, cnt, off);
}
ssize_t pwritev(int fd, const struct iovec* iov, int cnt, off_t off) {
  if (is_simfd(fd)) return vec(Op::kPwrite, fd, iov, cnt, off, true);
  return FASTMAP_REAL("pwritev", ssize_t (*)(int, const struct iovec*, int, off_t))(fd, iov, cnt,
                                                                                     off);
}
ssize_t pwritev64(int fd, const struct iovec* iov, int cnt, off64_t off) {
  return pwritev(fd, iov, cnt, off);
}

// No simulated file has .llseek, .fsync or a size: ESPIPE and EINVAL, as the kernel says.
off_t lseek(int fd, off_t off, int whence) noexcept {
  if (is_simfd(fd)) return set_errno(-ESPIPE);
  return FASTMAP_REAL("lseek", off_t (*)(int, off_t, int))(fd, off, whence);
}
off64_t lseek64(int fd, off64_t off, int whence) noexcept { return lseek(fd, off, whence); }

int fsync(int fd) {
  if (is_simfd(fd)) return static_cast<int>(set_errno(-EINVAL));
  return FASTMAP_REAL("fsync", int (*)(int))(fd);
}
int fdatasync(int fd) {
  if (is_simfd(fd)) return static_cast<int>(set_errno(-EINVAL));
  return FASTMAP_REAL("fdatasync", int (*)(int))(fd);
}
int ftruncate(int fd, off_t len) noexcept {
  if (is_simfd(fd)) return static_cast<int>(set_errno(-EINVAL));
  return FASTMAP_REAL("ftruncate", int (*)(int, off_t))(fd, len);
}
int ftruncate64(int fd, off64_t len) noexcept { return ftruncate(fd, len); }

void* mmap(void* addr, size_t len, int prot, int flags, int fd, off_t off) noexcept {
  if (!(flags & MAP_ANONYMOUS) && is_simfd(fd)) {
    // A device mapping traps into the simulator of this process; a forked child's calls
    // are served by its parent's, in another address space, so it cannot map devices.
    if (is_forwarder()) {
      set_errno(-ENODEV);
      return MAP_FAILED;
    }
    Call c{Op::kMmap, fd, reinterpret_cast<std::uint64_t>(addr), len,
           (static_cast<std::uint64_t>(static_cast<unsigned>(prot)) << 32) |
               static_cast<unsigned>(flags),
           static_cast<std::uint64_t>(off), nullptr};
    Result r = sim_call(c);
    if (r.ret < 0) {
      set_errno(r.ret);
      return MAP_FAILED;
    }
    return reinterpret_cast<void*>(r.a);
  }
  return FASTMAP_REAL("mmap", void* (*)(void*, size_t, int, int, int, off_t))(addr, len, prot,
                                                                              flags, fd, off);
}
void* mmap64(void* addr, size_t len, int prot, int flags, int fd, off64_t off) noexcept {
  return mmap(addr, len, prot, flags, fd, off);
}

int munmap(void* addr, size_t len) noexcept {
  // A simulated device mapping leaves the simulator's trap table with it.
  if (!is_forwarder() && owner_sim_started()) {
    const int r = fastmap_sim_munmap(addr, len);
    if (r <= 0) return static_cast<int>(set_errno(r));
  }
  return FASTMAP_REAL("munmap", int (*)(void*, size_t))(addr, len);
}

int fstat(int fd, struct stat* st) noexcept {
  const int r = FASTMAP_REAL("fstat", int (*)(int, struct stat*))(fd, st);
  if (r == 0 && is_simfd(fd)) return static_cast<int>(set_errno(patch_fd_stat(fd, st)));
  return r;
}
int fstat64(int fd, struct stat64* st) noexcept {
  return fstat(fd, reinterpret_cast<struct stat*>(st));
}
int __fxstat(int, int fd, struct stat* st) { return fstat(fd, st); }
int __fxstat64(int, int fd, struct stat64* st) { return fstat64(fd, st); }

}  // extern "C"
#pragma GCC visibility pop
