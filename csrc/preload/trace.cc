#include "preload/trace.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "preload/real.h"
#include "uapi/iommufd.h"
#include "uapi/vfio.h"
#include "uapi/vfio_migration.h"

namespace fastmap::preload {

namespace {

using namespace fastmap::uapi;

// What an fd is, from the path it was opened at (or the ioctl that made it): the VFIO
// container and device fds share an ioctl number (DIRTY_PAGES / DEVICE_FEATURE).
enum class Kind : unsigned char { kUnknown, kIommufd, kContainer, kGroup, kDevice };
std::atomic<Kind> g_kind[kMaxFd];

std::once_flag g_once;
int g_fd = -1;
std::atomic<unsigned long> g_seq{0};
// Region accesses by region index (config is 7), reads and writes.
constexpr unsigned kRegions = 9;
std::atomic<unsigned long> g_rw[kRegions][2];

void write_line(const char* s, std::size_t n) {
  (void)!FASTMAP_REAL("write", ssize_t (*)(int, const void*, size_t))(g_fd, s, n);
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
  g_fd = FASTMAP_REAL("open", int (*)(const char*, int, ...))(
      path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (g_fd >= 0) std::atexit(summary);
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

template <class T>
T in(const Call& c) {
  T v{};
  std::memcpy(&v, reinterpret_cast<const void*>(c.b), sizeof v);
  return v;
}

struct Named {
  unsigned long request;
  const char* name;
};

const char* ioctl_name(unsigned long req, Kind k) {
  static constexpr Named kNames[] = {
      {IOMMU_DESTROY, "IOMMU_DESTROY"},
      {IOMMU_IOAS_ALLOC, "IOMMU_IOAS_ALLOC"},
      {IOMMU_IOAS_ALLOW_IOVAS, "IOMMU_IOAS_ALLOW_IOVAS"},
      {IOMMU_IOAS_COPY, "IOMMU_IOAS_COPY"},
      {IOMMU_IOAS_IOVA_RANGES, "IOMMU_IOAS_IOVA_RANGES"},
      {IOMMU_IOAS_MAP, "IOMMU_IOAS_MAP"},
      {IOMMU_IOAS_UNMAP, "IOMMU_IOAS_UNMAP"},
      {IOMMU_OPTION, "IOMMU_OPTION"},
      {IOMMU_VFIO_IOAS, "IOMMU_VFIO_IOAS"},
      {IOMMU_HWPT_ALLOC, "IOMMU_HWPT_ALLOC"},
      {IOMMU_GET_HW_INFO, "IOMMU_GET_HW_INFO"},
      {IOMMU_HWPT_SET_DIRTY_TRACKING, "IOMMU_HWPT_SET_DIRTY_TRACKING"},
      {IOMMU_HWPT_GET_DIRTY_BITMAP, "IOMMU_HWPT_GET_DIRTY_BITMAP"},
      {IOMMU_HWPT_INVALIDATE, "IOMMU_HWPT_INVALIDATE"},
      {IOMMU_FAULT_QUEUE_ALLOC, "IOMMU_FAULT_QUEUE_ALLOC"},
      {IOMMU_IOAS_MAP_FILE, "IOMMU_IOAS_MAP_FILE"},
      {IOMMU_VIOMMU_ALLOC, "IOMMU_VIOMMU_ALLOC"},
      {IOMMU_VDEVICE_ALLOC, "IOMMU_VDEVICE_ALLOC"},
      {IOMMU_IOAS_CHANGE_PROCESS, "IOMMU_IOAS_CHANGE_PROCESS"},
      {VFIO_GET_API_VERSION, "VFIO_GET_API_VERSION"},
      {VFIO_CHECK_EXTENSION, "VFIO_CHECK_EXTENSION"},
      {VFIO_SET_IOMMU, "VFIO_SET_IOMMU"},
      {VFIO_GROUP_GET_STATUS, "VFIO_GROUP_GET_STATUS"},
      {VFIO_GROUP_SET_CONTAINER, "VFIO_GROUP_SET_CONTAINER"},
      {VFIO_GROUP_UNSET_CONTAINER, "VFIO_GROUP_UNSET_CONTAINER"},
      {VFIO_GROUP_GET_DEVICE_FD, "VFIO_GROUP_GET_DEVICE_FD"},
      {VFIO_DEVICE_GET_INFO, "VFIO_DEVICE_GET_INFO"},
      {VFIO_DEVICE_GET_REGION_INFO, "VFIO_DEVICE_GET_REGION_INFO"},
      {VFIO_DEVICE_GET_IRQ_INFO, "VFIO_DEVICE_GET_IRQ_INFO"},
      {VFIO_DEVICE_SET_IRQS, "VFIO_DEVICE_SET_IRQS"},
      {VFIO_DEVICE_RESET, "VFIO_DEVICE_RESET"},
      {VFIO_IOMMU_GET_INFO, "VFIO_IOMMU_GET_INFO"},
      {VFIO_IOMMU_MAP_DMA, "VFIO_IOMMU_MAP_DMA"},
      {VFIO_IOMMU_UNMAP_DMA, "VFIO_IOMMU_UNMAP_DMA"},
      {VFIO_DEVICE_BIND_IOMMUFD, "VFIO_DEVICE_BIND_IOMMUFD"},
      {VFIO_DEVICE_ATTACH_IOMMUFD_PT, "VFIO_DEVICE_ATTACH_IOMMUFD_PT"},
      {VFIO_DEVICE_DETACH_IOMMUFD_PT, "VFIO_DEVICE_DETACH_IOMMUFD_PT"},
      {VFIO_MIG_GET_PRECOPY_INFO, "VFIO_MIG_GET_PRECOPY_INFO"},
  };
  if (req == VFIO_DEVICE_FEATURE) {
    return k == Kind::kDevice ? "VFIO_DEVICE_FEATURE" : "VFIO_IOMMU_DIRTY_PAGES";
  }
  for (const Named& n : kNames) {
    if (n.request == req) return n.name;
  }
  return nullptr;
}

// Set bits in the bitmap GET_DIRTY_BITMAP filled in (the caller's memory: same process).
std::uint64_t dirty_bits(const iommu_hwpt_get_dirty_bitmap& v) {
  if (v.page_size == 0 || v.data == 0) return 0;
  const std::uint64_t bits = v.length / v.page_size;
  const auto* words = reinterpret_cast<const std::uint64_t*>(static_cast<std::uintptr_t>(v.data));
  std::uint64_t count = 0;
  for (std::uint64_t i = 0; i < bits / 64; ++i) count += __builtin_popcountll(words[i]);
  if (bits % 64) count += __builtin_popcountll(words[bits / 64] & ((1ull << (bits % 64)) - 1));
  return count;
}

const char* mig_state_name(std::uint32_t s) {
  static const char* const kNames[] = {"ERROR",    "STOP",        "RUNNING",  "STOP_COPY",
                                       "RESUMING", "RUNNING_P2P", "PRE_COPY", "PRE_COPY_P2P"};
  return s < sizeof kNames / sizeof kNames[0] ? kNames[s] : "?";
}

// The fields that tell what the call did; `ok` says whether out fields are meaningful.
int ioctl_fields(const Call& c, bool ok, char* s, std::size_t n) {
  const unsigned long req = c.a;
  if (c.b == 0) return 0;
  switch (req) {
    case VFIO_DEVICE_BIND_IOMMUFD: {
      auto v = in<vfio_device_bind_iommufd>(c);
      return std::snprintf(s, n, " iommufd=%d -> devid=%u", v.iommufd, ok ? v.out_devid : 0);
    }
    case VFIO_DEVICE_ATTACH_IOMMUFD_PT:
      return std::snprintf(s, n, " -> pt_id=%u", in<vfio_device_attach_iommufd_pt>(c).pt_id);
    case IOMMU_IOAS_ALLOC:
      return std::snprintf(s, n, " -> ioas=%u", ok ? in<iommu_ioas_alloc>(c).out_ioas_id : 0);
    case IOMMU_GET_HW_INFO: {
      auto v = in<iommu_hw_info>(c);
      return std::snprintf(s, n, " dev=%u -> type=%u caps=0x%" PRIx64, v.dev_id,
                           ok ? v.out_data_type : 0, ok ? v.out_capabilities : 0);
    }
    case IOMMU_HWPT_ALLOC: {
      auto v = in<iommu_hwpt_alloc>(c);
      return std::snprintf(s, n, " flags=0x%x dev=%u pt=%u data_type=%u -> hwpt=%u", v.flags,
                           v.dev_id, v.pt_id, v.data_type, ok ? v.out_hwpt_id : 0);
    }
    case IOMMU_IOAS_MAP: {
      auto v = in<iommu_ioas_map>(c);
      return std::snprintf(s, n, " ioas=%u flags=0x%x va=0x%" PRIx64 " len=0x%" PRIx64
                           " -> iova=0x%" PRIx64, v.ioas_id, v.flags, v.user_va, v.length,
                           v.iova);
    }
    case IOMMU_IOAS_UNMAP: {
      auto v = in<iommu_ioas_unmap>(c);
      return std::snprintf(s, n, " ioas=%u iova=0x%" PRIx64 " len=0x%" PRIx64, v.ioas_id,
                           v.iova, v.length);
    }
    case IOMMU_IOAS_IOVA_RANGES: {
      auto v = in<iommu_ioas_iova_ranges>(c);
      return std::snprintf(s, n, " ioas=%u -> num_iovas=%u", v.ioas_id, v.num_iovas);
    }
    case IOMMU_DESTROY:
      return std::snprintf(s, n, " id=%u", in<iommu_vfio_ioas>(c).ioas_id);  // {size, id}
    case VFIO_IOMMU_MAP_DMA: {
      auto v = in<vfio_iommu_type1_dma_map>(c);
      return std::snprintf(s, n, " flags=0x%x va=0x%" PRIx64 " iova=0x%" PRIx64
                           " size=0x%" PRIx64, v.flags, v.vaddr, v.iova, v.size);
    }
    case VFIO_IOMMU_UNMAP_DMA: {
      auto v = in<vfio_iommu_type1_dma_unmap>(c);
      return std::snprintf(s, n, " flags=0x%x iova=0x%" PRIx64 " size=0x%" PRIx64, v.flags,
                           v.iova, v.size);
    }
    case IOMMU_HWPT_SET_DIRTY_TRACKING: {
      auto v = in<iommu_hwpt_set_dirty_tracking>(c);
      return std::snprintf(s, n, " hwpt=%u flags=0x%x", v.hwpt_id, v.flags);
    }
    case IOMMU_HWPT_GET_DIRTY_BITMAP: {
      // The dirty count is what the migration figures compare with the device's writes.
      auto v = in<iommu_hwpt_get_dirty_bitmap>(c);
      return std::snprintf(s, n, " hwpt=%u flags=0x%x iova=0x%" PRIx64 " len=0x%" PRIx64
                           " -> dirty=%" PRIu64, v.hwpt_id, v.flags, v.iova, v.length,
                           ok ? dirty_bits(v) : 0);
    }
    case VFIO_DEVICE_GET_REGION_INFO: {
      auto v = in<vfio_region_info>(c);
      return std::snprintf(s, n, " index=%u -> flags=0x%x size=0x%" PRIx64, v.index,
                           ok ? v.flags : 0, ok ? v.size : 0);
    }
    case VFIO_DEVICE_GET_IRQ_INFO: {
      auto v = in<vfio_irq_info>(c);
      return std::snprintf(s, n, " index=%u -> flags=0x%x count=%u", v.index, ok ? v.flags : 0,
                           ok ? v.count : 0);
    }
    case VFIO_DEVICE_SET_IRQS: {
      // struct vfio_irq_set: argsz, flags, index, start, count (u32 each), then data.
      std::uint32_t v[5];
      std::memcpy(v, reinterpret_cast<const void*>(c.b), sizeof v);
      return std::snprintf(s, n, " flags=0x%x index=%u start=%u count=%u", v[1], v[2], v[3],
                           v[4]);
    }
    case VFIO_DEVICE_FEATURE: {
      const auto f = in<vfio_device_feature>(c);
      const std::uint32_t flags = f.flags;
      const bool set = flags & VFIO_DEVICE_FEATURE_SET, get = flags & VFIO_DEVICE_FEATURE_GET;
      if ((flags & VFIO_DEVICE_FEATURE_MASK) != VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE ||
          (flags & VFIO_DEVICE_FEATURE_PROBE) || !(set || get) ||
          f.argsz < sizeof f + sizeof(vfio_device_feature_mig_state)) {
        return std::snprintf(s, n, " flags=0x%x", flags);
      }
      // The migration arc asked for (SET) or the state read (GET), by name.
      vfio_device_feature_mig_state st{};
      std::memcpy(&st, reinterpret_cast<const void*>(c.b + sizeof(vfio_device_feature)),
                  sizeof st);
      if (get) {
        return std::snprintf(s, n, " flags=0x%x -> state=%s", flags,
                             ok ? mig_state_name(st.device_state) : "?");
      }
      return std::snprintf(s, n, " flags=0x%x state=%s -> data_fd=%d", flags,
                           mig_state_name(st.device_state), ok ? st.data_fd : -1);
    }
    case VFIO_MIG_GET_PRECOPY_INFO: {
      auto v = in<vfio_precopy_info>(c);
      return std::snprintf(s, n, " -> initial_bytes=%" PRIu64 " dirty_bytes=%" PRIu64,
                           ok ? v.initial_bytes : 0, ok ? v.dirty_bytes : 0);
    }
    case VFIO_SET_IOMMU:
    case VFIO_CHECK_EXTENSION:
      return std::snprintf(s, n, " arg=%" PRIu64, c.b);
    case VFIO_GROUP_SET_CONTAINER:
      return std::snprintf(s, n, " container=%d", in<int>(c));
    case VFIO_GROUP_GET_DEVICE_FD:
      return std::snprintf(s, n, " \"%.64s\"", reinterpret_cast<const char*>(c.b));
    default:
      return 0;
  }
}

}  // namespace

bool trace_enabled() noexcept {
  std::call_once(g_once, open_trace);
  return g_fd >= 0;
}

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
      const char* name = ioctl_name(c.a, k);
      if (name) {
        add(std::snprintf(line + n, cap - n, "ioctl fd=%d %s", c.fd, name));
      } else {
        add(std::snprintf(line + n, cap - n, "ioctl fd=%d 0x%lx", c.fd,
                          static_cast<unsigned long>(c.a)));
      }
      add(ioctl_fields(c, r.ret >= 0, line + n, cap - n));
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
