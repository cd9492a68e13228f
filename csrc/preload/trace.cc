#include "preload/trace.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "preload/real.h"
#include "preload/trace_ioctls.h"
#include "uapi/vfio.h"

namespace fastmap::preload {

namespace {

using namespace fastmap::uapi;

// What an fd is, from the path it was opened at (or the ioctl that made it): the VFIO
// container and device fds share an ioctl number (DIRTY_PAGES / DEVICE_FEATURE).
enum class Kind : unsigned char { kUnknown, kIommufd, kContainer, kGroup, kDevice };
std::atomic<Kind> g_kind[kMaxFd];

std::once_flag g_once;
std::atomic<int> g_fd{-1};  // read by close/close_range on any thread
std::atomic<unsigned long> g_seq{0};
// Region accesses by region index (config is 7), reads and writes.
constexpr unsigned kRegions = 9;
std::atomic<unsigned long> g_rw[kRegions][2];

void write_line(const char* s, std::size_t n) {
  (void)!FASTMAP_REAL("write", ssize_t (*)(int, const void*, size_t))(g_fd.load(), s, n);
}

void summary() {
  static const char* const kNames[kRegions] = {"BAR0", "BAR1", "BAR2", "BAR3", "BAR4",
                                               "BAR5", "ROM",  "config", "VGA"};
  char line[512];
  int n = std::snprintf(line, sizeof line, "# region accesses (reads/writes), pid %d:",
                        static_cast<int>(::getpid()));
  for (unsigned i = 0; i < kRegions; ++i) {
    const unsigned long r = g_rw[i][0], w = g_rw[i][1];
    if (r + w == 0 || n >= static_cast<int>(sizeof line)) continue;
    n += std::snprintf(line + n, sizeof line - static_cast<std::size_t>(n), " %s %lu/%lu",
                       kNames[i], r, w);
  }
  if (n < static_cast<int>(sizeof line) - 1) line[n++] = '\n';
  write_line(line, static_cast<std::size_t>(n));
}

void open_trace() {
  const char* path = std::getenv("FASTMAP_SIM_TRACE");
  if (!path || !*path) return;
  // O_APPEND: a forked child (and an exec'd image) add to the same file.
  const int fd = FASTMAP_REAL("open", int (*)(const char*, int, ...))(
      path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return;
  // Programs count on the lowest free number for their next fd: move out of their way.
  rlimit lim{};
  const rlim_t top = ::getrlimit(RLIMIT_NOFILE, &lim) == 0 ? std::min<rlim_t>(lim.rlim_cur, 1024)
                                                            : 1024;
  const int hi = top > 64 ? FASTMAP_REAL("fcntl", int (*)(int, int, ...))(
                                fd, F_DUPFD_CLOEXEC, static_cast<int>(top - 64))
                          : -1;
  if (hi >= 0) FASTMAP_REAL("close", int (*)(int))(fd);
  g_fd = hi >= 0 ? hi : fd;
  std::atexit(summary);
}

Kind kind_of(int fd) { return fd >= 0 && fd < kMaxFd ? g_kind[fd].load() : Kind::kUnknown; }
void set_kind(long fd, Kind k) {
  if (fd >= 0 && fd < kMaxFd) g_kind[fd].store(k);
}

Kind kind_of_path(const char* p) {
  if (std::strcmp(p, "/dev/iommu") == 0) return Kind::kIommufd;
  if (std::strcmp(p, "/dev/vfio/vfio") == 0) return Kind::kContainer;
  if (std::strncmp(p, "/dev/vfio/devices/", 18) == 0) return Kind::kDevice;
  if (std::strncmp(p, "/dev/vfio/", 10) == 0) return Kind::kGroup;
  return Kind::kUnknown;
}

}  // namespace

bool trace_enabled() noexcept {
  std::call_once(g_once, open_trace);
  return g_fd >= 0;
}

int trace_fd() noexcept { return g_fd; }

void trace_call(const Call& c, const Result& r, const char* buf) noexcept {
  if ((c.op == Op::kPread || c.op == Op::kPwrite || c.op == Op::kRead || c.op == Op::kWrite)) {
    // Region index << 40 is the file offset (vfio-pci); read/write use the file position.
    const std::uint64_t index = c.op == Op::kPread || c.op == Op::kPwrite ? c.c >> 40 : 7;
    if (r.ret >= 0 && index < kRegions) {
      g_rw[index][c.op == Op::kPwrite || c.op == Op::kWrite].fetch_add(1);
    }
    return;
  }
  switch (c.op) {
    case Op::kOpen: case Op::kClose: case Op::kIoctl: case Op::kMmap: case Op::kDupTo:
    case Op::kSysRead: case Op::kSysReadlink: case Op::kSysRealpath: case Op::kSysList:
    case Op::kChardev: case Op::kNodeChardev:
      break;
    default:
      return;  // fstat's chardev lookups, type probes, fork bookkeeping
  }
  char line[768];
  int n = std::snprintf(line, sizeof line, "%5lu ", g_seq.fetch_add(1) + 1);
  const std::size_t cap = sizeof line - 2;
  auto add = [&](int k) { n = k < 0 ? n : std::min<int>(n + k, static_cast<int>(cap)); };
  switch (c.op) {
    case Op::kOpen:
      if (r.ret >= 0) set_kind(r.ret, kind_of_path(c.path));
      add(std::snprintf(line + n, cap - n, "open %s", c.path));
      break;
    case Op::kClose:
      add(std::snprintf(line + n, cap - n, "close fd=%d", c.fd));
      set_kind(c.fd, Kind::kUnknown);
      break;
    case Op::kIoctl: {
      const Kind k = kind_of(c.fd);
      const char* name = ioctl_name(c.a, k == Kind::kDevice);
      if (name) {
        add(std::snprintf(line + n, cap - n, "ioctl fd=%d %s", c.fd, name));
      } else {
        add(std::snprintf(line + n, cap - n, "ioctl fd=%d 0x%lx", c.fd,
                          static_cast<unsigned long>(c.a)));
      }
      add(ioctl_fields(c.a, c.b, r.ret >= 0, line + n, cap - n));
      if (c.a == VFIO_GROUP_GET_DEVICE_FD) set_kind(r.ret, Kind::kDevice);
      break;
    }
    case Op::kMmap:
      add(std::snprintf(line + n, cap - n, "mmap fd=%d len=0x%" PRIx64 " off=0x%" PRIx64, c.fd,
                        c.b, c.d));
      break;
    case Op::kDupTo:
      set_kind(static_cast<long>(c.a), kind_of(c.fd));
      add(std::snprintf(line + n, cap - n, "dup fd=%d -> %d", c.fd, static_cast<int>(c.a)));
      break;
    case Op::kSysRead:
    case Op::kSysReadlink:
    case Op::kSysRealpath: {
      const char* what = c.op == Op::kSysRead ? "read" : c.op == Op::kSysReadlink ? "readlink"
                                                                                   : "realpath";
      add(std::snprintf(line + n, cap - n, "sysfs %s %s", what, c.path));
      if (r.ret > 0 && buf) {
        const int len = static_cast<int>(std::min<long>(r.ret, 96));
        int shown = len;
        while (shown > 0 && (buf[shown - 1] == '\n' || buf[shown - 1] == '\0')) --shown;
        add(std::snprintf(line + n, cap - n, " \"%.*s\"", shown, buf));
      }
      break;
    }
    case Op::kSysList:
      add(std::snprintf(line + n, cap - n, "sysfs list %s", c.path));
      break;
    case Op::kChardev:  // fstat of a simulated fd: its device number
      add(std::snprintf(line + n, cap - n, "fstat fd=%d -> rdev %" PRIu64 ":%" PRIu64, c.fd,
                        r.a, r.b));
      break;
    case Op::kNodeChardev:  // stat of a device node path
      add(std::snprintf(line + n, cap - n, "stat %s -> rdev %" PRIu64 ":%" PRIu64, c.path,
                        r.a, r.b));
      break;
    default:
      break;
  }
  const bool devt = c.op == Op::kChardev || c.op == Op::kNodeChardev;  // ret: a flag
  if (devt && r.ret >= 0) {
    // the device number is the answer
  } else if (r.ret < 0) {
    const char* name = strerrorname_np(static_cast<int>(-r.ret));
    if (name) {
      add(std::snprintf(line + n, cap - n, " = -%s", name));
    } else {
      add(std::snprintf(line + n, cap - n, " = %ld", r.ret));
    }
  } else {
    add(std::snprintf(line + n, cap - n, " = %ld", r.ret));
  }
  line[n++] = '\n';
  write_line(line, static_cast<std::size_t>(n));
}

}  // namespace fastmap::preload
