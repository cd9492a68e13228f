// The interposer's process state: which fds are simulated, which paths belong to the
// simulator, and the simulator this process hosts (built from FASTMAP_SIM_CONFIG).
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "fastmap_sim.h"
#include "preload/config.h"
#include "preload/preload.h"
#include "preload/real.h"
#include "preload/trace.h"

namespace fastmap::preload {

namespace {

// Bit 0: simulated; bit 1: the program's FD_CLOEXEC.
std::atomic<unsigned char> g_fds[kMaxFd];

bool has_prefix(const char* path, const char* dir) noexcept {
  const std::size_t n = std::strlen(dir);
  return std::strncmp(path, dir, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

std::atomic<fastmap_sim*> g_sim{nullptr};
std::once_flag g_sim_once;

int alloc_fd(void*) {
  bool serving = false;
  const int spare = serving_alloc(&serving);
  if (serving) return spare;
  const int fd = reserve_fd();
  if (fd >= 0) mark_simfd(fd, true);  // ioctl-made fds are O_CLOEXEC in the kernel
  return fd;
}

void release_fd(void*, int fd) {
  if (serving_release(fd)) return;
  unmark_simfd(fd);
  FASTMAP_REAL("close", int (*)(int))(fd);
}

void create_sim() noexcept {
  SimSetup setup;
  const char* text = std::getenv("FASTMAP_SIM_CONFIG");
  std::string err;
  if (!parse_config(text ? text : "", &setup, &err)) {
    const std::string msg = "fastmap sim-run: bad FASTMAP_SIM_CONFIG: " + err + "\n";
    (void)!::write(2, msg.data(), msg.size());
    return;
  }
  fastmap_sim* sim = nullptr;
  if (fastmap_sim_create(&setup.config, &sim) != 0) return;
  for (const DeviceSetup& d : setup.devices) {
    fastmap_sim_pci_spec spec;
    fastmap_sim_pci_spec_init(&spec);
    spec.bdf = d.bdf.c_str();
    spec.group = d.group;
    spec.iommu = d.iommu.c_str();
    spec.dirty_tracking = d.dirty;
    spec.kind = d.kind.c_str();
    if (int rc = fastmap_sim_add_pci_device(sim, &spec, nullptr)) {
      const std::string msg = "fastmap sim-run: device " + d.kind + " " + d.bdf + ": " +
                              std::strerror(-rc) + "\n";
      (void)!::write(2, msg.data(), msg.size());
    }
  }
  fastmap_sim_set_fd_allocator(sim, alloc_fd, release_fd, nullptr);
  g_sim = sim;
}

}  // namespace

bool is_simfd(int fd) noexcept {
  return fd >= 0 && fd < kMaxFd && (g_fds[fd].load(std::memory_order_acquire) & 1);
}

void mark_simfd(int fd, bool cloexec) noexcept {
  if (fd >= 0 && fd < kMaxFd) g_fds[fd].store(cloexec ? 3 : 1, std::memory_order_release);
}

void unmark_simfd(int fd) noexcept {
  if (fd >= 0 && fd < kMaxFd) g_fds[fd].store(0, std::memory_order_release);
}

bool simfd_cloexec(int fd) noexcept { return is_simfd(fd) && (g_fds[fd].load() & 2); }

void set_simfd_cloexec(int fd, bool on) noexcept {
  if (is_simfd(fd)) g_fds[fd].store(on ? 3 : 1, std::memory_order_release);
}

int reserve_fd() noexcept {
  const int fd = FASTMAP_REAL("open", int (*)(const char*, int, ...))("/dev/null",
                                                                     O_RDWR | O_CLOEXEC);
  if (fd < 0) return -errno;
  if (fd >= kMaxFd) {
    FASTMAP_REAL("close", int (*)(int))(fd);
    return -EMFILE;
  }
  return fd;
}

bool is_sim_dev(const char* path) noexcept {
  return path && (std::strcmp(path, "/dev/iommu") == 0 || has_prefix(path, "/dev/vfio"));
}

bool is_sim_sysfs(const char* path) noexcept {
  if (!path) return false;
  static const char* const kDirs[] = {
      "/sys/bus/pci/devices",  "/sys/bus/pci/drivers/vfio-pci", "/sys/kernel/iommu_groups",
      "/sys/devices/pci0000:00", "/sys/class/iommu",            "/sys/devices/virtual/iommu",
  };
  for (const char* d : kDirs) {
    if (has_prefix(path, d)) return true;
  }
  return false;
}

long set_errno(long rc) noexcept {
  if (rc >= 0) return rc;
  errno = static_cast<int>(-rc);
  return -1;
}

bool owner_sim_started() noexcept { return g_sim.load() != nullptr; }

fastmap_sim* owner_sim() noexcept {
  std::call_once(g_sim_once, create_sim);
  return g_sim;
}

Result sim_call(const Call& call, char* buf, std::size_t size) noexcept {
  const Result r = is_forwarder() ? forward_call(call, buf, size) : local_call(call, buf, size);
  if (trace_enabled()) trace_call(call, r, buf);
  return r;
}

Result local_call(const Call& c, char* buf, std::size_t size) noexcept {
  Result r;
  fastmap_sim* sim = owner_sim();
  if (!sim) {
    r.ret = -ENODEV;
    return r;
  }
  switch (c.op) {
    case Op::kOpen:
      r.ret = fastmap_sim_open(sim, c.path, static_cast<int>(c.a));
      break;
    case Op::kClose:
      r.ret = fastmap_sim_close(sim, c.fd);
      break;
    case Op::kIoctl:
      r.ret = fastmap_sim_ioctl(sim, c.fd, c.a, reinterpret_cast<void*>(c.b));
      break;
    case Op::kRead:
      r.ret = fastmap_sim_read(sim, c.fd, reinterpret_cast<void*>(c.a), c.b);
      break;
    case Op::kWrite:
      r.ret = fastmap_sim_write(sim, c.fd, reinterpret_cast<const void*>(c.a), c.b);
      break;
    case Op::kPread:
      r.ret = fastmap_sim_pread(sim, c.fd, reinterpret_cast<void*>(c.a), c.b, c.c);
      break;
    case Op::kPwrite:
      r.ret = fastmap_sim_pwrite(sim, c.fd, reinterpret_cast<const void*>(c.a), c.b, c.c);
      break;
    case Op::kMmap: {
      void* out = nullptr;
      r.ret = fastmap_sim_mmap(sim, c.fd, reinterpret_cast<void*>(c.a), c.b,
                               static_cast<int>(c.c >> 32), static_cast<int>(c.c & 0xffffffffu),
                               c.d, &out);
      r.a = reinterpret_cast<std::uint64_t>(out);
      break;
    }
    case Op::kChardev: {
      unsigned major = 0, minor = 0;
      r.ret = fastmap_sim_chardev(sim, c.fd, &major, &minor);
      r.a = major;
      r.b = minor;
      break;
    }
    case Op::kDupTo:
      r.ret = fastmap_sim_dup_to(sim, c.fd, static_cast<int>(c.a));
      break;
    case Op::kNodeChardev: {
      unsigned major = 0, minor = 0;
      r.ret = fastmap_sim_node_chardev(sim, c.path, &major, &minor);
      r.a = major;
      r.b = minor;
      break;
    }
    case Op::kNodeList:
      r.ret = fastmap_sim_node_list(sim, buf, size);
      break;
    case Op::kSysRead:
      r.ret = fastmap_sim_sysfs_read(sim, c.path, buf, size);
      break;
    case Op::kSysReadlink:
      r.ret = fastmap_sim_sysfs_readlink(sim, c.path, buf, size);
      break;
    case Op::kSysList:
      r.ret = fastmap_sim_sysfs_list(sim, c.path, buf, size);
      break;
    case Op::kSysType:
      r.ret = fastmap_sim_sysfs_type(sim, c.path);
      break;
    case Op::kSysRealpath:
      r.ret = fastmap_sim_sysfs_realpath(sim, c.path, buf, size);
      break;
    case Op::kHello:
    case Op::kFork:
    case Op::kReaped:
      r.ret = -EINVAL;
      break;
  }
  return r;
}

}  // namespace fastmap::preload
