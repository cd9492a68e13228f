// Structure-aware random fuzzer of the simulated kernel's ioctl entry (SimKernel::ioctl).
//
// Every iommufd and VFIO request is generated from a description of its struct: each field
// gets a value of its kind (a live object id, an fd, an IOVA, a length, a user pointer, flags,
// or junk), the size/argsz field is right, short, long with a zero or non-zero tail, and the
// struct itself is placed at a valid, NULL, wild, PROT_NONE, read-only or short (ending at a
// PROT_NONE guard page) address. Run under ASan+UBSan (and LeakSanitizer at exit), it checks
// after every call:
//   - no crash or sanitizer report (the sanitizers abort on one);
//   - the return is 0 (or a documented non-negative result) or a negative errno from the set
//     the kernel's iommufd/VFIO code can return;
//   - on the "shadowed" iommufd fd, which only ever sees well-ordered single-threaded iommufd
//     calls, the IOAS contents agree with a shadow model of the successful MAP/COPY/UNMAP
//     calls: each successful UNMAP reports exactly the bytes of the shadow areas it covered,
//     and an unmap-all (checked periodically) the whole shadow; every live object answers and
//     a never-allocated id is ENOENT;
//   - at the end every object the run created can be destroyed (no leaked reference), and
//     destroying it again is ENOENT.
// Other threads (--threads) hammer a second iommufd, VFIO cdevs, groups and containers with
// anything, including closing and reopening files under each other.
//
//   usage: fuzz_ioctl [--seed N] [--seconds S] [--ops N] [--threads T] [--verbose]
// A failure prints the seed and the op; rerunning with that seed and --threads 1 replays it.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "sim/sim_kernel.h"
#include "sim/vfio/machine.h"
#include "uapi/iommufd.h"
#include "uapi/iommufd_test.h"
#include "uapi/vfio.h"

namespace {

using namespace fastmap::uapi;
using fastmap::sim::SimKernel;

constexpr std::uint64_t kPage = 4096;

[[noreturn]] void fail(const char* what, std::uint64_t seed, long op, const std::string& detail) {
  std::fprintf(stderr, "FUZZ FAILURE (seed %llu, op %ld): %s: %s\n",
               static_cast<unsigned long long>(seed), op, what, detail.c_str());
  std::abort();
}

// ---- user memory the pointers are drawn from -------------------------------------------------

struct Arena {
  static constexpr std::size_t kRwPages = 64;
  unsigned char* rw = nullptr;      // kRwPages read-write pages (data and buffers to map)
  // Per thread, one RW page for its structs, then a PROT_NONE guard page. (Shared, another
  // thread's struct would overwrite this one's between its placing and the kernel's read.)
  static constexpr int kMaxThreads = 64;
  unsigned char* args = nullptr;
  unsigned char* args_of(int thread) const { return args + 2 * thread * kPage; }
  unsigned char* ro = nullptr;      // a read-only page
  unsigned char* none = nullptr;    // a PROT_NONE page
  // Unmapped in practice: below where PIE binaries, libraries and ASan's shadow live. (A page
  // munmapped here would be taken again by the next mmap, ASan's own included, and writes
  // through it would corrupt that.)
  std::uint64_t hole = 0x10000000;

  // Each region sits between PROT_NONE guard pages: a pointer drawn from it plus a length
  // that runs past its end faults there (EFAULT), instead of reaching the next mapping, which
  // may be a thread's stack or the allocator's heap.
  Arena() {
    auto map = [](std::size_t pages, int prot) {
      void* p = ::mmap(nullptr, (pages + 2) * kPage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS,
                       -1, 0);
      if (p == MAP_FAILED) std::abort();
      auto* inner = static_cast<unsigned char*>(p) + kPage;
      if (prot != PROT_NONE && ::mprotect(inner, pages * kPage, prot) != 0) std::abort();
      return inner;
    };
    rw = map(kRwPages, PROT_READ | PROT_WRITE);
    args = map(2 * kMaxThreads, PROT_READ | PROT_WRITE);
    for (int t = 0; t < kMaxThreads; ++t) ::mprotect(args + (2 * t + 1) * kPage, kPage, PROT_NONE);
    ro = map(1, PROT_READ | PROT_WRITE);
    std::memset(ro, 0x5a, kPage);
    ::mprotect(ro, kPage, PROT_READ);
    none = map(1, PROT_NONE);
  }
  ~Arena() {
    auto unmap = [](unsigned char* inner, std::size_t pages) {
      ::munmap(inner - kPage, (pages + 2) * kPage);
    };
    unmap(rw, kRwPages);
    unmap(args, 2 * kMaxThreads);
    unmap(ro, 1);
    unmap(none, 1);
  }
};

// ---- the request descriptions -------------------------------------------------------------

enum class K : std::uint8_t { Size, Flags, Id, Fd, Iova, Len, Uptr, Num, Op, Raw };

struct Field {
  std::uint16_t off;
  std::uint8_t width;  // 2, 4 or 8
  K kind;
};

enum class Arg : std::uint8_t { Struct, Int, IntPtr, String, None };

struct Req {
  const char* name;
  unsigned long nr;
  Arg arg;
  std::uint16_t size;  // the struct's size (Struct), or the payload size for IntPtr
  std::vector<Field> fields;
  bool iommufd;   // an iommufd (/dev/iommu) request, else VFIO
  bool shadowed;  // allowed on the shadowed fd
};

#define F(S, f, k) Field{offsetof(S, f), sizeof(S::f), K::k}

std::vector<Req> requests() {
  std::vector<Req> r;
  r.push_back({"DESTROY", IOMMU_DESTROY, Arg::Struct, sizeof(iommu_destroy),
               {F(iommu_destroy, size, Size), F(iommu_destroy, id, Id)}, true, true});
  r.push_back({"IOAS_ALLOC", IOMMU_IOAS_ALLOC, Arg::Struct, sizeof(iommu_ioas_alloc),
               {F(iommu_ioas_alloc, size, Size), F(iommu_ioas_alloc, flags, Flags),
                F(iommu_ioas_alloc, out_ioas_id, Raw)},
               true, true});
  r.push_back({"IOAS_ALLOW_IOVAS", IOMMU_IOAS_ALLOW_IOVAS, Arg::Struct,
               sizeof(iommu_ioas_allow_iovas),
               {F(iommu_ioas_allow_iovas, size, Size), F(iommu_ioas_allow_iovas, ioas_id, Id),
                F(iommu_ioas_allow_iovas, num_iovas, Num),
                F(iommu_ioas_allow_iovas, reserved, Flags),
                F(iommu_ioas_allow_iovas, allowed_iovas, Uptr)},
               true, true});
  r.push_back({"IOAS_COPY", IOMMU_IOAS_COPY, Arg::Struct, sizeof(iommu_ioas_copy),
               {F(iommu_ioas_copy, size, Size), F(iommu_ioas_copy, flags, Flags),
                F(iommu_ioas_copy, dst_ioas_id, Id), F(iommu_ioas_copy, src_ioas_id, Id),
                F(iommu_ioas_copy, length, Len), F(iommu_ioas_copy, dst_iova, Iova),
                F(iommu_ioas_copy, src_iova, Iova)},
               true, true});
  r.push_back({"IOAS_IOVA_RANGES", IOMMU_IOAS_IOVA_RANGES, Arg::Struct,
               sizeof(iommu_ioas_iova_ranges),
               {F(iommu_ioas_iova_ranges, size, Size), F(iommu_ioas_iova_ranges, ioas_id, Id),
                F(iommu_ioas_iova_ranges, num_iovas, Num),
                F(iommu_ioas_iova_ranges, reserved, Flags),
                F(iommu_ioas_iova_ranges, allowed_iovas, Uptr)},
               true, true});
  r.push_back({"IOAS_MAP", IOMMU_IOAS_MAP, Arg::Struct, sizeof(iommu_ioas_map),
               {F(iommu_ioas_map, size, Size), F(iommu_ioas_map, flags, Flags),
                F(iommu_ioas_map, ioas_id, Id), F(iommu_ioas_map, reserved, Flags),
                F(iommu_ioas_map, user_va, Uptr), F(iommu_ioas_map, length, Len),
                F(iommu_ioas_map, iova, Iova)},
               true, true});
  r.push_back({"IOAS_MAP_FILE", IOMMU_IOAS_MAP_FILE, Arg::Struct, sizeof(iommu_ioas_map_file),
               {F(iommu_ioas_map_file, size, Size), F(iommu_ioas_map_file, flags, Flags),
                F(iommu_ioas_map_file, ioas_id, Id), F(iommu_ioas_map_file, fd, Fd),
                F(iommu_ioas_map_file, start, Len), F(iommu_ioas_map_file, length, Len),
                F(iommu_ioas_map_file, iova, Iova)},
               true, false});
  r.push_back({"IOAS_UNMAP", IOMMU_IOAS_UNMAP, Arg::Struct, sizeof(iommu_ioas_unmap),
               {F(iommu_ioas_unmap, size, Size), F(iommu_ioas_unmap, ioas_id, Id),
                F(iommu_ioas_unmap, iova, Iova), F(iommu_ioas_unmap, length, Len)},
               true, true});
  r.push_back({"OPTION", IOMMU_OPTION, Arg::Struct, sizeof(iommu_option),
               {F(iommu_option, size, Size), F(iommu_option, option_id, Op),
                F(iommu_option, op, Op), F(iommu_option, reserved, Flags),
                F(iommu_option, object_id, Id), F(iommu_option, val64, Num)},
               true, true});
  r.push_back({"VFIO_IOAS", IOMMU_VFIO_IOAS, Arg::Struct, sizeof(iommu_vfio_ioas),
               {F(iommu_vfio_ioas, size, Size), F(iommu_vfio_ioas, ioas_id, Id),
                F(iommu_vfio_ioas, op, Op), F(iommu_vfio_ioas, reserved, Flags)},
               true, false});
  r.push_back({"HWPT_ALLOC", IOMMU_HWPT_ALLOC, Arg::Struct, sizeof(iommu_hwpt_alloc),
               {F(iommu_hwpt_alloc, size, Size), F(iommu_hwpt_alloc, flags, Flags),
                F(iommu_hwpt_alloc, dev_id, Id), F(iommu_hwpt_alloc, pt_id, Id),
                F(iommu_hwpt_alloc, reserved, Flags), F(iommu_hwpt_alloc, data_type, Op),
                F(iommu_hwpt_alloc, data_len, Num), F(iommu_hwpt_alloc, data_uptr, Uptr),
                F(iommu_hwpt_alloc, fault_id, Id), F(iommu_hwpt_alloc, reserved2, Flags)},
               true, true});
  r.push_back({"GET_HW_INFO", IOMMU_GET_HW_INFO, Arg::Struct, sizeof(iommu_hw_info),
               {F(iommu_hw_info, size, Size), F(iommu_hw_info, flags, Flags),
                F(iommu_hw_info, dev_id, Id), F(iommu_hw_info, data_len, Num),
                F(iommu_hw_info, data_uptr, Uptr)},
               true, true});
  r.push_back({"HWPT_SET_DIRTY_TRACKING", IOMMU_HWPT_SET_DIRTY_TRACKING, Arg::Struct,
               sizeof(iommu_hwpt_set_dirty_tracking),
               {F(iommu_hwpt_set_dirty_tracking, size, Size),
                F(iommu_hwpt_set_dirty_tracking, flags, Flags),
                F(iommu_hwpt_set_dirty_tracking, hwpt_id, Id)},
               true, true});
  r.push_back({"HWPT_GET_DIRTY_BITMAP", IOMMU_HWPT_GET_DIRTY_BITMAP, Arg::Struct,
               sizeof(iommu_hwpt_get_dirty_bitmap),
               {F(iommu_hwpt_get_dirty_bitmap, size, Size),
                F(iommu_hwpt_get_dirty_bitmap, hwpt_id, Id),
                F(iommu_hwpt_get_dirty_bitmap, flags, Flags),
                F(iommu_hwpt_get_dirty_bitmap, iova, Iova),
                F(iommu_hwpt_get_dirty_bitmap, length, Len),
                F(iommu_hwpt_get_dirty_bitmap, page_size, Len),
                F(iommu_hwpt_get_dirty_bitmap, data, Uptr)},
               true, true});
  r.push_back({"HWPT_INVALIDATE", IOMMU_HWPT_INVALIDATE, Arg::Struct,
               sizeof(iommu_hwpt_invalidate),
               {F(iommu_hwpt_invalidate, size, Size), F(iommu_hwpt_invalidate, hwpt_id, Id),
                F(iommu_hwpt_invalidate, data_uptr, Uptr),
                F(iommu_hwpt_invalidate, data_type, Op),
                F(iommu_hwpt_invalidate, entry_len, Num),
                F(iommu_hwpt_invalidate, entry_num, Num)},
               true, true});
  r.push_back({"FAULT_QUEUE_ALLOC", IOMMU_FAULT_QUEUE_ALLOC, Arg::Struct,
               sizeof(iommu_fault_alloc),
               {F(iommu_fault_alloc, size, Size), F(iommu_fault_alloc, flags, Flags)}, true,
               false});
  r.push_back({"TEST_CMD", IOMMU_TEST_CMD, Arg::Struct, sizeof(iommu_test_cmd),
               {F(iommu_test_cmd, size, Size), F(iommu_test_cmd, op, Op),
                F(iommu_test_cmd, id, Id), F(iommu_test_cmd, reserved, Flags),
                Field{16, 8, K::Iova}, Field{24, 8, K::Len}, Field{32, 8, K::Uptr},
                Field{40, 8, K::Uptr}, Field{48, 8, K::Len}, Field{56, 8, K::Raw},
                Field{16, 4, K::Id}, Field{20, 4, K::Flags},
                F(iommu_test_cmd, last, Flags)},
               true, true});
  for (unsigned long nr : {IOMMU_VIOMMU_ALLOC, IOMMU_VDEVICE_ALLOC, IOMMU_IOAS_CHANGE_PROCESS}) {
    r.push_back({"IOMMU_LATER", nr, Arg::Struct, 64, {Field{0, 4, K::Size}}, true, true});
  }
  // VFIO (container, group and device fds; on an iommufd, the compat container).
  r.push_back({"VFIO_GET_API_VERSION", VFIO_GET_API_VERSION, Arg::None, 0, {}, false, false});
  r.push_back({"VFIO_CHECK_EXTENSION", VFIO_CHECK_EXTENSION, Arg::Int, 0, {}, false, false});
  r.push_back({"VFIO_SET_IOMMU", VFIO_SET_IOMMU, Arg::Int, 0, {}, false, false});
  r.push_back({"VFIO_GROUP_GET_STATUS", VFIO_GROUP_GET_STATUS, Arg::Struct,
               sizeof(vfio_group_status),
               {F(vfio_group_status, argsz, Size), F(vfio_group_status, flags, Flags)}, false,
               false});
  r.push_back({"VFIO_GROUP_SET_CONTAINER", VFIO_GROUP_SET_CONTAINER, Arg::IntPtr, 4, {}, false,
               false});
  r.push_back({"VFIO_GROUP_UNSET_CONTAINER", VFIO_GROUP_UNSET_CONTAINER, Arg::None, 0, {},
               false, false});
  r.push_back({"VFIO_GROUP_GET_DEVICE_FD", VFIO_GROUP_GET_DEVICE_FD, Arg::String, 0, {}, false,
               false});
  r.push_back({"VFIO_DEVICE_GET_INFO", VFIO_DEVICE_GET_INFO, Arg::Struct,
               sizeof(vfio_device_info),
               {F(vfio_device_info, argsz, Size), F(vfio_device_info, flags, Flags)}, false,
               false});
  r.push_back({"VFIO_DEVICE_GET_REGION_INFO", VFIO_DEVICE_GET_REGION_INFO, Arg::Struct,
               sizeof(vfio_region_info),
               {F(vfio_region_info, argsz, Size), F(vfio_region_info, flags, Flags),
                F(vfio_region_info, index, Num)},
               false, false});
  r.push_back({"VFIO_DEVICE_GET_IRQ_INFO", VFIO_DEVICE_GET_IRQ_INFO, Arg::Struct,
               sizeof(vfio_irq_info),
               {F(vfio_irq_info, argsz, Size), F(vfio_irq_info, flags, Flags),
                F(vfio_irq_info, index, Num)},
               false, false});
  r.push_back({"VFIO_DEVICE_SET_IRQS", VFIO_DEVICE_SET_IRQS, Arg::Struct, 32,
               {Field{0, 4, K::Size}, Field{4, 4, K::Flags}, Field{8, 4, K::Num},
                Field{12, 4, K::Num}, Field{16, 4, K::Num}, Field{20, 4, K::Fd}},
               false, false});
  r.push_back({"VFIO_DEVICE_RESET", VFIO_DEVICE_RESET, Arg::None, 0, {}, false, false});
  r.push_back({"VFIO_IOMMU_GET_INFO", VFIO_IOMMU_GET_INFO, Arg::Struct, 256,
               {F(vfio_iommu_type1_info, argsz, Size), F(vfio_iommu_type1_info, flags, Flags)},
               false, false});
  r.push_back({"VFIO_IOMMU_MAP_DMA", VFIO_IOMMU_MAP_DMA, Arg::Struct,
               sizeof(vfio_iommu_type1_dma_map),
               {F(vfio_iommu_type1_dma_map, argsz, Size),
                F(vfio_iommu_type1_dma_map, flags, Flags),
                F(vfio_iommu_type1_dma_map, vaddr, Uptr),
                F(vfio_iommu_type1_dma_map, iova, Iova), F(vfio_iommu_type1_dma_map, size, Len)},
               false, false});
  r.push_back({"VFIO_IOMMU_UNMAP_DMA", VFIO_IOMMU_UNMAP_DMA, Arg::Struct,
               sizeof(vfio_iommu_type1_dma_unmap) + sizeof(vfio_bitmap),
               {F(vfio_iommu_type1_dma_unmap, argsz, Size),
                F(vfio_iommu_type1_dma_unmap, flags, Flags),
                F(vfio_iommu_type1_dma_unmap, iova, Iova),
                F(vfio_iommu_type1_dma_unmap, size, Len), Field{24, 8, K::Len},
                Field{32, 8, K::Len}, Field{40, 8, K::Uptr}},
               false, false});
  r.push_back({"VFIO_DIRTY_PAGES/DEVICE_FEATURE", VFIO_IOMMU_DIRTY_PAGES, Arg::Struct,
               sizeof(vfio_iommu_type1_dirty_bitmap) + sizeof(vfio_iommu_type1_dirty_bitmap_get),
               {Field{0, 4, K::Size}, Field{4, 4, K::Flags}, Field{8, 8, K::Iova},
                Field{16, 8, K::Len}, Field{24, 8, K::Len}, Field{32, 8, K::Len},
                Field{40, 8, K::Uptr}},
               false, false});
  r.push_back({"VFIO_DEVICE_BIND_IOMMUFD", VFIO_DEVICE_BIND_IOMMUFD, Arg::Struct,
               sizeof(vfio_device_bind_iommufd),
               {F(vfio_device_bind_iommufd, argsz, Size),
                F(vfio_device_bind_iommufd, flags, Flags),
                F(vfio_device_bind_iommufd, iommufd, Fd)},
               false, false});
  r.push_back({"VFIO_DEVICE_ATTACH_IOMMUFD_PT", VFIO_DEVICE_ATTACH_IOMMUFD_PT, Arg::Struct,
               sizeof(vfio_device_attach_iommufd_pt),
               {F(vfio_device_attach_iommufd_pt, argsz, Size),
                F(vfio_device_attach_iommufd_pt, flags, Flags),
                F(vfio_device_attach_iommufd_pt, pt_id, Id)},
               false, false});
  r.push_back({"VFIO_DEVICE_DETACH_IOMMUFD_PT", VFIO_DEVICE_DETACH_IOMMUFD_PT, Arg::Struct,
               sizeof(vfio_device_detach_iommufd_pt),
               {F(vfio_device_detach_iommufd_pt, argsz, Size),
                F(vfio_device_detach_iommufd_pt, flags, Flags)},
               false, false});
  return r;
}

#undef F

// Errnos the kernel's iommufd and VFIO ioctls can return (anything else is a simulator bug).
bool allowed_errno(long e) {
  switch (e) {
    case EINVAL: case EFAULT: case ENOTTY: case E2BIG: case ENOENT: case EOPNOTSUPP:
    case EBUSY: case EEXIST: case ENOSPC: case EOVERFLOW: case ENOMEM: case EPERM:
    case EMSGSIZE: case ENODEV: case EBADF: case EMFILE: case ERANGE: case ENXIO:
    case EDEADLK: case EAGAIN: case EBADFD: case EADDRINUSE: case EACCES:
    case EIO:  // IOMMU_TEST_OP_MD_CHECK_REFS: a page's pin count is not the one asked
      return true;
    default:
      return false;
  }
}

// ---- live state shared by the threads --------------------------------------------------------

struct Shared {
  SimKernel kernel;
  Arena arena;
  std::vector<std::string> paths;  // device nodes to open
  std::mutex mu;                   // guards fds and ids
  // Open fds (not the shadowed one) and what they are: 'i' /dev/iommu, 'c' a VFIO container,
  // 'g' a group, 'd' a device, 'o' anything else.
  std::vector<std::pair<int, char>> fds;
  std::vector<std::uint32_t> ids;  // object ids seen on any fd
  int shadow_fd = -1;              // the single-threaded, shadow-modelled iommufd
  std::atomic<bool> stop{false};
  std::atomic<long> ops{0};
  std::map<std::string, std::map<long, long>> seen;  // request -> errno -> count (verbose)
  std::mutex seen_mu;
};

char kind_of(const std::string& path) {
  if (path == "/dev/iommu") return 'i';
  if (path == "/dev/vfio/vfio") return 'c';
  if (path.starts_with("/dev/vfio/devices/")) return 'd';
  if (path.starts_with("/dev/vfio/")) return 'g';
  return 'o';
}

struct Rng {
  std::mt19937_64 g;
  explicit Rng(std::uint64_t s) : g(s) {}
  std::uint64_t next() { return g(); }
  std::uint64_t below(std::uint64_t n) { return n ? g() % n : 0; }
  bool chance(unsigned pct) { return below(100) < pct; }
};

template <class T>
T pick(Rng& r, const std::vector<T>& v, T dflt) {
  return v.empty() ? dflt : v[r.below(v.size())];
}

// A shadow of one IOAS's areas on the shadowed fd: iova -> length.
struct ShadowIoas {
  std::map<std::uint64_t, std::uint64_t> areas;
  bool known = true;  // false after a failed unmap that may have removed some areas
  bool adopted = false;  // first seen in a MAP, not in IOAS_ALLOC (the compat IOAS)
  long born = 0;         // the op that made it known
  std::uint64_t bytes() const {
    std::uint64_t b = 0;
    for (auto& [s, l] : areas) b += l;
    return b;
  }
};

class Worker {
 public:
  Worker(Shared& sh, int thread, std::uint64_t seed, bool verbose)
      : sh_(sh), thread_(thread), r_(seed), seed_(seed), shadow_owner_(thread == 0),
        verbose_(verbose), reqs_(requests()) {}

  void run(long max_ops) {
    for (long i = 0; (max_ops < 0 || i < max_ops) && !sh_.stop.load(); ++i) {
      op_ = sh_.ops.fetch_add(1);
      step();
    }
  }

  // Destroy everything the shadowed fd holds: all must go (no leaked references), twice is
  // ENOENT.
  void teardown_shadow() {
    std::vector<std::uint32_t> left(own_ids_.begin(), own_ids_.end());
    for (int round = 0; round < 8 && !left.empty(); ++round) {
      std::vector<std::uint32_t> busy;
      for (std::uint32_t id : left) {
        long rc = destroy(sh_.shadow_fd, id);
        if (rc == -EBUSY) {
          busy.push_back(id);
        } else if (rc == -ENOENT && !shadow_.count(id)) {
          // A mock domain's automatic HWPT and its idev go with the device object.
        } else if (rc != 0) {
          fail("teardown destroy", seed_, op_, "id " + std::to_string(id) + " rc " +
                                                   std::to_string(rc));
        } else if (destroy(sh_.shadow_fd, id) != -ENOENT) {
          fail("destroyed id still answers", seed_, op_, std::to_string(id));
        }
      }
      left.swap(busy);
    }
    if (!left.empty()) {
      const std::uint32_t id = left.front();
      iommu_ioas_iova_ranges q{};
      q.size = sizeof(q);
      q.ioas_id = id;
      const bool ioas = sh_.kernel.ioctl(sh_.shadow_fd, IOMMU_IOAS_IOVA_RANGES, &q) != -ENOENT;
      auto s = shadow_.find(id);
      fail("object stays busy after every other object is gone", seed_, op_,
           "id " + std::to_string(id) + (ioas ? " (an IOAS" : " (not an IOAS") +
               (s == shadow_.end() ? ")"
                                   : std::string(s->second.adopted ? ", adopted" : ", allocated") +
                                         " at op " + std::to_string(s->second.born) + ")"));
    }
  }

 private:
  Shared& sh_;
  int thread_;
  Rng r_;
  std::uint64_t seed_;
  bool shadow_owner_;
  bool verbose_;
  std::vector<Req> reqs_;
  long op_ = 0;
  std::map<std::uint32_t, ShadowIoas> shadow_;  // IOASes on the shadowed fd
  std::set<std::uint32_t> own_ids_;             // every live object on the shadowed fd

  long destroy(int fd, std::uint32_t id) {
    iommu_destroy d{sizeof(d), id};
    return sh_.kernel.ioctl(fd, IOMMU_DESTROY, &d);
  }

  std::uint32_t any_id(bool shadowed) {
    switch (r_.below(10)) {
      case 0: return 0;
      case 1: return static_cast<std::uint32_t>(r_.next());
      case 2: return static_cast<std::uint32_t>(r_.below(64));
      default: break;
    }
    if (shadowed) {
      if (own_ids_.empty()) return 1;
      auto it = own_ids_.begin();
      std::advance(it, r_.below(own_ids_.size()));
      return *it;
    }
    std::lock_guard lk(sh_.mu);
    return pick<std::uint32_t>(r_, sh_.ids, 1);
  }

  // Mostly an fd of the kind the request is for, so calls get past the fd check.
  int any_fd(char kind = 0) {
    switch (r_.below(16)) {
      case 0: return -1;
      case 1: return static_cast<int>(r_.below(64));
      case 2: return sh_.shadow_fd;
      default: break;
    }
    std::lock_guard lk(sh_.mu);
    if (sh_.fds.empty()) return 3;
    for (int tries = 0; kind && tries < 16; ++tries) {
      const auto& [fd, k] = sh_.fds[r_.below(sh_.fds.size())];
      if (k == kind) return fd;
    }
    return sh_.fds[r_.below(sh_.fds.size())].first;
  }

  static char target_of(const Req& q, Rng& r) {
    if (q.iommufd) return 'i';
    const std::string n = q.name;
    if (n.starts_with("VFIO_GROUP")) return 'g';
    if (n.starts_with("VFIO_DEVICE")) return 'd';
    if (n.starts_with("VFIO_DIRTY")) return r.chance(50) ? 'c' : 'd';
    return r.chance(75) ? 'c' : 'i';  // container calls; on an iommufd, the compat layer
  }

  std::uint64_t iova() {
    switch (r_.below(10)) {
      case 0: return 0;
      case 1: return r_.next();
      case 2: return r_.next() & ~(kPage - 1);
      case 3: return ~std::uint64_t{0} - kPage + 1;
      case 4: return MOCK_APERTURE_START + r_.below(64) * kPage;
      case 5: return r_.below(1ull << 20);
      default: {
        if (!shadow_.empty() && r_.chance(60)) {  // an existing area's start or inside it
          auto it = shadow_.begin();
          std::advance(it, r_.below(shadow_.size()));
          auto& a = it->second.areas;
          if (!a.empty()) {
            auto jt = a.begin();
            std::advance(jt, r_.below(a.size()));
            return jt->first + (r_.chance(70) ? 0 : r_.below(jt->second / kPage + 1) * kPage);
          }
        }
        return (1ull << 24) + r_.below(1ull << 14) * kPage;
      }
    }
  }

  std::uint64_t len() {
    switch (r_.below(10)) {
      case 0: return 0;
      case 1: return r_.next();
      case 2: return ~std::uint64_t{0};
      case 3: return r_.below(2 * kPage) + 1;
      case 4: return std::uint64_t{1} << r_.below(64);
      default: return (r_.below(Arena::kRwPages) + 1) * kPage;
    }
  }

  std::uint64_t uptr() {
    const auto u = [](const void* p) { return reinterpret_cast<std::uint64_t>(p); };
    switch (r_.below(12)) {
      case 0: return 0;
      case 1: return u(sh_.arena.none) + r_.below(kPage);
      case 2: return u(sh_.arena.ro) + r_.below(kPage);
      case 3: return sh_.arena.hole;
      case 4: return 0xffff888000000000ull + r_.below(1ull << 30);  // kernel half
      case 5: return r_.below(1ull << 16);                          // low, unmapped
      case 6: return u(sh_.arena.args_of(thread_)) + kPage - r_.below(64);  // into the guard
      case 7: return u(sh_.arena.rw) + r_.below(Arena::kRwPages * kPage);
      default: return u(sh_.arena.rw) + r_.below(Arena::kRwPages) * kPage;
    }
  }

  std::uint64_t value(K kind, const Req& q, bool shadowed) {
    switch (kind) {
      case K::Size: return q.size;  // adjusted by the caller
      case K::Flags:
        return r_.chance(60) ? 0 : r_.chance(70) ? (1ull << r_.below(4)) | r_.below(8)
                                                  : r_.next();
      case K::Id: return any_id(shadowed);
      case K::Fd:
        return static_cast<std::uint64_t>(static_cast<std::int64_t>(any_fd(r_.chance(50) ? 'i' : 'c')));
      case K::Iova: return iova();
      case K::Len: return len();
      case K::Uptr: return uptr();
      case K::Num: return r_.chance(80) ? r_.below(8) : r_.next();
      case K::Op: return r_.chance(85) ? r_.below(16) : r_.next();
      case K::Raw: return r_.chance(70) ? 0 : r_.next();
    }
    return 0;
  }

  static void put(unsigned char* b, const Field& f, std::uint64_t v) {
    std::memcpy(b + f.off, &v, f.width);  // little-endian: the low bytes
  }

  // Where the struct goes: 0 valid, 1 NULL, 2 wild, 3 PROT_NONE, 4 read-only, 5 short.
  // The shadowed fd never gets read-only or short structs: a call that succeeds there must
  // leave its outputs where they can be read back.
  std::uint64_t place(const unsigned char* buf, std::size_t n, int* how, bool shadowed = false) {
    const auto u = [](const void* p) { return reinterpret_cast<std::uint64_t>(p); };
    unsigned char* args = sh_.arena.args_of(thread_);
    const unsigned k = r_.below(shadowed ? 92 : 100);
    if (k < 80 || n > kPage) {
      *how = 0;
      unsigned char* at = args + (n < kPage ? r_.below((kPage - n) / 8 + 1) * 8 : 0);
      std::memcpy(at, buf, std::min<std::size_t>(n, kPage));
      return u(at);
    }
    if (k < 84) return *how = 1, 0;
    if (k < 88) return *how = 2, r_.chance(50) ? sh_.arena.hole : 0xffff888000001000ull;
    if (k < 92) return *how = 3, u(sh_.arena.none);
    if (k < 96) return *how = 4, u(sh_.arena.ro);
    *how = 5;
    const std::size_t keep = n ? r_.below(n) : 0;  // only `keep` bytes before the guard
    unsigned char* at = args + kPage - keep;
    std::memcpy(at, buf, keep);
    return u(at);
  }

  void step() {
    if (shadow_owner_ && r_.chance(2)) return check_shadow();
    if (r_.chance(3)) return churn_files();
    const Req& q = reqs_[r_.below(reqs_.size())];
    const bool shadowed = shadow_owner_ && q.shadowed && r_.chance(85);
    int fd = shadowed ? sh_.shadow_fd : any_fd(target_of(q, r_));
    if (shadowed) fd = sh_.shadow_fd;
    if (!shadowed && fd == sh_.shadow_fd) fd = -1;  // only the owner touches the shadowed fd

    unsigned char buf[512] = {};
    std::size_t n = q.size;
    std::uint64_t argv = 0;
    int how = 0;
    switch (q.arg) {
      case Arg::None: argv = r_.chance(80) ? 0 : r_.next(); break;
      case Arg::Int: argv = r_.chance(80) ? r_.below(12) : r_.next(); break;
      case Arg::IntPtr: {
        const std::int32_t v = any_fd(r_.chance(70) ? 'c' : 'i');
        std::memcpy(buf, &v, 4);
        argv = place(buf, 4, &how);
        break;
      }
      case Arg::String: {
        std::string s = "0000:00:0" + std::to_string(3 + r_.below(3)) + ".0";
        if (r_.chance(20)) s = std::string(r_.below(300), 'x');
        if (r_.chance(10)) s.clear();
        const std::size_t m = std::min(s.size() + (r_.chance(90) ? 1 : 0), sizeof(buf));
        std::memcpy(buf, s.data(), std::min(s.size(), m));
        argv = place(buf, m, &how);
        break;
      }
      case Arg::Struct: {
        if (!r_.chance(5)) {
          for (std::size_t i = 0; i < n; ++i) buf[i] = 0;
          for (const Field& f : q.fields) put(buf, f, value(f.kind, q, shadowed));
        } else {
          for (std::size_t i = 0; i < n; ++i) buf[i] = static_cast<unsigned char>(r_.next());
        }
        // The size field: right, short, long with a zero or junk tail, or anything.
        std::uint32_t size = static_cast<std::uint32_t>(n);
        const unsigned k = r_.below(100);
        if (k < 8) {
          size = static_cast<std::uint32_t>(r_.below(n + 1));
        } else if (k < 16) {
          size = static_cast<std::uint32_t>(n + 8 * (1 + r_.below(16)));
          if (r_.chance(50)) buf[n + r_.below(size - n)] = 1;
        } else if (k < 19) {
          size = static_cast<std::uint32_t>(r_.next());
        }
        std::memcpy(buf, &size, 4);
        const std::size_t placed = std::min<std::size_t>(std::max<std::size_t>(n, size), 300);
        argv = place(buf, placed, &how, shadowed);
        break;
      }
    }

    unsigned char orig[sizeof(buf)];
    std::memcpy(orig, buf, sizeof(buf));
    const long rc = sh_.kernel.ioctl(fd, q.nr, reinterpret_cast<void*>(argv));
    check_return(q, rc);
    if (verbose_) {
      std::lock_guard lk(sh_.seen_mu);
      ++sh_.seen[q.name][rc < 0 ? rc : 0];
    }
    if (rc < 0) {
      if (shadowed && q.nr == IOMMU_IOAS_UNMAP) {
        iommu_ioas_unmap u{};
        std::memcpy(&u, orig, sizeof(u));
        unmap_failed(u);
      }
      return;
    }
    // Read back what the kernel wrote (a successful struct call had a readable argument).
    if (q.arg == Arg::Struct && how != 0 && how != 4 && how != 5) {
      fail("success with a bad argument pointer", seed_, op_, q.name);
    }
    if (q.arg == Arg::Struct && how == 0) {
      std::memcpy(buf, reinterpret_cast<const void*>(argv), std::min<std::size_t>(n, kPage));
    }
    learn(q, buf, orig, rc, shadowed, how);
  }

  void check_return(const Req& q, long rc) {
    if (rc < 0) {
      if (!allowed_errno(-rc)) {
        fail("errno the kernel does not give", seed_, op_,
             std::string(q.name) + " -> " + std::to_string(rc));
      }
      return;
    }
    const bool may_be_positive = q.nr == VFIO_CHECK_EXTENSION ||
                                 q.nr == VFIO_GROUP_GET_DEVICE_FD;
    if (rc > 0 && !may_be_positive) {
      fail("positive return", seed_, op_, std::string(q.name) + " -> " + std::to_string(rc));
    }
  }

  void note_id(std::uint32_t id, bool shadowed) {
    if (!id) return;
    if (shadowed) {
      own_ids_.insert(id);
      return;
    }
    std::lock_guard lk(sh_.mu);
    sh_.ids.push_back(id);
    if (sh_.ids.size() > 256) sh_.ids.erase(sh_.ids.begin());
  }

  // `buf` is the struct after the call, `orig` before it.
  void learn(const Req& q, const unsigned char* buf, const unsigned char* orig, long rc,
             bool shadowed, int how) {
    if (q.nr == VFIO_GROUP_GET_DEVICE_FD && rc > 0) {
      std::lock_guard lk(sh_.mu);
      sh_.fds.emplace_back(static_cast<int>(rc), 'd');
      return;
    }
    if (how != 0) return;  // outputs were not written where we can read them
    auto rd32 = [buf](std::size_t off) {
      std::uint32_t v;
      std::memcpy(&v, buf + off, 4);
      return v;
    };
    auto rd64 = [buf](std::size_t off) {
      std::uint64_t v;
      std::memcpy(&v, buf + off, 8);
      return v;
    };
    switch (q.nr) {
      case IOMMU_IOAS_ALLOC: {
        const std::uint32_t id = rd32(offsetof(iommu_ioas_alloc, out_ioas_id));
        note_id(id, shadowed);
        if (shadowed) {
          if (auto old = shadow_.find(id); old != shadow_.end()) {
            fail("IOAS id handed out twice", seed_, op_,
                 std::to_string(id) + (old->second.adopted ? " (adopted at op " : " (allocated at op ") +
                     std::to_string(old->second.born) + ")");
          }
          shadow_[id] = ShadowIoas{};
          shadow_[id].born = op_;
        }
        break;
      }
      case IOMMU_HWPT_ALLOC:
        note_id(rd32(offsetof(iommu_hwpt_alloc, out_hwpt_id)), shadowed);
        break;
      case IOMMU_FAULT_QUEUE_ALLOC: {
        note_id(rd32(offsetof(iommu_fault_alloc, out_fault_id)), shadowed);
        std::lock_guard lk(sh_.mu);
        sh_.fds.emplace_back(static_cast<int>(rd32(offsetof(iommu_fault_alloc, out_fault_fd))), 'o');
        break;
      }
      case IOMMU_TEST_CMD: {
        const std::uint32_t op = rd32(offsetof(iommu_test_cmd, op));
        if (op == IOMMU_TEST_OP_MOCK_DOMAIN || op == IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS) {
          for (std::size_t off : {16u, 20u, 24u}) note_id(rd32(off), shadowed);
        } else if (op == IOMMU_TEST_OP_CREATE_ACCESS) {  // out_access_fd
          std::lock_guard lk(sh_.mu);
          sh_.fds.emplace_back(static_cast<int>(rd32(16)), 'o');
        }
        break;
      }
      case VFIO_DEVICE_BIND_IOMMUFD:
        note_id(rd32(offsetof(vfio_device_bind_iommufd, out_devid)), false);
        break;
      case IOMMU_DESTROY:
        if (shadowed) {
          const std::uint32_t id = rd32(offsetof(iommu_destroy, id));
          own_ids_.erase(id);
          shadow_.erase(id);
        }
        break;
      default: break;
    }
    if (!shadowed) return;
    if (q.nr == IOMMU_IOAS_MAP) {
      add_area(rd32(offsetof(iommu_ioas_map, ioas_id)), rd64(offsetof(iommu_ioas_map, iova)),
               rd64(offsetof(iommu_ioas_map, length)));
    } else if (q.nr == IOMMU_IOAS_COPY) {
      add_area(rd32(offsetof(iommu_ioas_copy, dst_ioas_id)),
               rd64(offsetof(iommu_ioas_copy, dst_iova)),
               rd64(offsetof(iommu_ioas_copy, length)));
    } else if (q.nr == IOMMU_IOAS_UNMAP) {
      iommu_ioas_unmap u{};
      std::memcpy(&u, orig, sizeof(u));
      unmapped(u, rd64(offsetof(iommu_ioas_unmap, length)));
    }
  }

  std::string area_str(std::uint32_t id, std::uint64_t iova, std::uint64_t length) {
    char s[128];
    std::snprintf(s, sizeof(s), "ioas %u [0x%llx, +0x%llx)", id,
                  static_cast<unsigned long long>(iova), static_cast<unsigned long long>(length));
    return s;
  }

  void add_area(std::uint32_t id, std::uint64_t iova, std::uint64_t length) {
    auto it = shadow_.find(id);
    if (it == shadow_.end()) {
      // An IOAS the model did not see allocated: the VFIO compat IOAS, made when a device
      // or group was bound to this fd from another thread. Track it from here, unchecked.
      it = shadow_.emplace(id, ShadowIoas{}).first;
      it->second.known = false;
      it->second.adopted = true;
      it->second.born = op_;
      own_ids_.insert(id);
    }
    auto& a = it->second.areas;
    if (length == 0) fail("zero-length map succeeded", seed_, op_, area_str(id, iova, length));
    auto next = a.lower_bound(iova);
    const bool hits_next = next != a.end() && next->first <= iova + length - 1;
    const bool hits_prev = next != a.begin() && [&] {
      auto p = std::prev(next);
      return p->first + p->second - 1 >= iova;
    }();
    if (it->second.known && (hits_next || hits_prev)) {
      fail("map succeeded over an existing area", seed_, op_, area_str(id, iova, length));
    }
    a[iova] = length;
  }

  // A successful IOMMU_IOAS_UNMAP of [iova, iova+length) that reported `out` bytes.
  void unmapped(const iommu_ioas_unmap& u, std::uint64_t out) {
    auto it = shadow_.find(u.ioas_id);
    if (it == shadow_.end()) return;  // the compat IOAS (see add_area)
    auto& s = it->second;
    const bool all = u.iova == 0 && u.length == ~std::uint64_t{0};
    std::uint64_t want = 0;
    const std::uint64_t last = all ? ~std::uint64_t{0} : u.iova + u.length - 1;
    for (auto jt = s.areas.lower_bound(u.iova); jt != s.areas.end();) {
      if (jt->first + jt->second - 1 > last) break;
      want += jt->second;
      jt = s.areas.erase(jt);
    }
    if (s.known && want != out) {
      fail("unmap reported bytes that differ from the shadow", seed_, op_,
           area_str(u.ioas_id, u.iova, out) + " shadow " + std::to_string(want));
    }
  }

  void unmap_failed(const iommu_ioas_unmap& u) {
    auto it = shadow_.find(u.ioas_id);
    if (it == shadow_.end() || u.length == 0) return;
    // The kernel unmaps areas in order and may stop at one that straddles the range: the
    // areas before it may be gone. Trust the shadow again only after the next unmap-all.
    auto& a = it->second.areas;
    const std::uint64_t last = u.iova + u.length - 1 < u.iova ? ~0ull : u.iova + u.length - 1;
    auto jt = a.upper_bound(last);
    if (jt != a.begin() && std::prev(jt)->first + std::prev(jt)->second > u.iova) {
      it->second.known = false;
    }
  }

  // Ask the kernel about every live object and one IOAS's whole contents.
  void check_shadow() {
    iommu_destroy never{sizeof(never), 0x7ffffff0u};
    if (sh_.kernel.ioctl(sh_.shadow_fd, IOMMU_DESTROY, &never) != -ENOENT) {
      fail("never-allocated id answered", seed_, op_, "0x7ffffff0");
    }
    for (auto& [id, s] : shadow_) {
      iommu_ioas_iova_ranges q{};
      q.size = sizeof(q);
      q.ioas_id = id;
      const long rc = sh_.kernel.ioctl(sh_.shadow_fd, IOMMU_IOAS_IOVA_RANGES, &q);
      if (rc != 0 && rc != -EMSGSIZE) {
        fail("live IOAS does not answer IOVA_RANGES", seed_, op_,
             "ioas " + std::to_string(id) + " -> " + std::to_string(rc) +
                 (s.adopted ? ", adopted at op " : ", allocated at op ") + std::to_string(s.born));
      }
    }
    if (shadow_.empty()) return;
    auto it = shadow_.begin();
    std::advance(it, r_.below(shadow_.size()));
    iommu_ioas_unmap u{sizeof(u), it->first, 0, ~std::uint64_t{0}};
    const long rc = sh_.kernel.ioctl(sh_.shadow_fd, IOMMU_IOAS_UNMAP, &u);
    const std::uint64_t want = it->second.bytes();
    if (rc == 0) {
      if (it->second.known && u.length != want) {
        fail("unmap-all disagrees with the shadow", seed_, op_,
             "ioas " + std::to_string(it->first) + " got " + std::to_string(u.length) +
                 " shadow " + std::to_string(want));
      }
    } else if (rc == -ENOENT) {
      if (it->second.known && want != 0) {
        fail("unmap-all found nothing but the shadow has areas", seed_, op_,
             std::to_string(want));
      }
    } else if (rc != -EBUSY && rc != -EDEADLK) {
      fail("unmap-all", seed_, op_, std::to_string(rc));
    } else {
      return;  // an access holds pages: the shadow stays as it is
    }
    it->second.areas.clear();
    it->second.known = true;
  }

  // Open and close files under the other threads' feet.
  void churn_files() {
    if (r_.chance(50)) {
      const std::string path = pick<std::string>(r_, sh_.paths, "/dev/iommu");
      const int fd = sh_.kernel.open(path.c_str(), 2);
      if (fd >= 0) {
        std::lock_guard lk(sh_.mu);
        sh_.fds.emplace_back(fd, kind_of(path));
      } else if (!allowed_errno(-fd)) {
        fail("open errno", seed_, op_, path + " -> " + std::to_string(fd));
      }
      return;
    }
    int fd = -1;
    {
      std::lock_guard lk(sh_.mu);
      if (sh_.fds.size() < 4) return;
      const std::size_t i = r_.below(sh_.fds.size());
      fd = sh_.fds[i].first;
      sh_.fds.erase(sh_.fds.begin() + static_cast<long>(i));
    }
    if (fd == sh_.shadow_fd) return;
    const int rc = sh_.kernel.close(fd);
    if (rc != 0 && rc != -EBADF) fail("close", seed_, op_, std::to_string(rc));
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t seed = static_cast<std::uint64_t>(
      std::chrono::steady_clock::now().time_since_epoch().count());
  double seconds = 10;
  long max_ops = -1;
  int threads = 4;
  bool verbose = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? argv[++i] : (std::abort(), nullptr); };
    if (a == "--seed") seed = std::strtoull(next(), nullptr, 0);
    else if (a == "--seconds") seconds = std::strtod(next(), nullptr);
    else if (a == "--ops") max_ops = std::strtol(next(), nullptr, 0);
    else if (a == "--threads") threads = std::clamp(std::atoi(next()), 1, Arena::kMaxThreads);
    else if (a == "--verbose") verbose = true;
    else {
      std::fprintf(stderr, "usage: %s [--seed N] [--seconds S] [--ops N] [--threads T]\n", argv[0]);
      return 2;
    }
  }
  std::printf("fuzz_ioctl: seed %llu, %d thread(s), %s\n",
              static_cast<unsigned long long>(seed), threads,
              max_ops >= 0 ? (std::to_string(max_ops) + " ops per thread").c_str()
                           : (std::to_string(seconds) + " s").c_str());
  std::fflush(stdout);
  {
    Shared sh;
    fastmap::sim::vfio::PciDeviceInfo info;
    for (int d = 0; d < 3; ++d) {
      fastmap::sim::vfio::PciDeviceSpec spec;
      if (d == 2) spec.group = sh.kernel.machine().devices().front().group;  // a shared group
      if (sh.kernel.machine().add_pci_device(spec, &info) != 0) {
        spec.group = -1;
        if (sh.kernel.machine().add_pci_device(spec, &info) != 0) return 3;
      }
      sh.paths.push_back(info.cdev);
      sh.paths.push_back(info.group_path);
    }
    sh.paths.push_back("/dev/iommu");
    sh.paths.push_back("/dev/vfio/vfio");
    sh.paths.push_back("/dev/nonexistent");
    sh.shadow_fd = sh.kernel.open("/dev/iommu", 2);
    for (const std::string& p : sh.paths) {
      const int fd = sh.kernel.open(p.c_str(), 2);
      if (fd >= 0) sh.fds.emplace_back(fd, kind_of(p));
    }

    std::vector<Worker> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back(sh, t, seed + 0x9e3779b97f4a7c15ull * static_cast<std::uint64_t>(t),
                           verbose);
    }
    const long per_thread = max_ops;
    std::vector<std::thread> ts;
    for (int t = 1; t < threads; ++t) ts.emplace_back([&, t] { workers[t].run(per_thread); });
    std::thread timer;
    if (max_ops < 0) {
      timer = std::thread([&] {
        const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
        while (!sh.stop.load() && std::chrono::steady_clock::now() < end) {
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        sh.stop.store(true);
      });
    }
    workers[0].run(per_thread);
    if (max_ops >= 0) {
      for (auto& t : ts) t.join();
    } else {
      for (auto& t : ts) t.join();
      timer.join();
    }
    // Close every other file first: an access or device there may hold the shadowed IOASes.
    for (auto [fd, kind] : sh.fds) sh.kernel.close(fd);
    sh.fds.clear();
    workers[0].teardown_shadow();
    if (verbose) {
      for (auto& [name, m] : sh.seen) {
        std::printf("%-32s", name.c_str());
        for (auto& [e, c] : m) std::printf(" %ld:%ld", e, c);
        std::printf("\n");
      }
    }
    std::printf("fuzz_ioctl: %ld ops, no finding\n", sh.ops.load());
    sh.kernel.close(sh.shadow_fd);
  }
  return 0;
}
