// /dev/iommu's file and ioctl dispatcher (iommufd_fops_ioctl).
//
// One table, sorted by command number, declares for each command its kernel struct, the
// offsetofend of its last mandatory field (min_size) and its handler, so the generic size
// rules live here once: the struct size comes from the argument's first u32, a size below
// min_size is EINVAL, a larger one must have an all-zero tail (else E2BIG), a smaller one
// is zero-extended.
#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>

#include "sim/iommufd/ctx.h"
#include "sim/iommufd/device_api.h"
#include "sim/iommufd/ioctls.h"
#include "sim/core/kernel_core.h"
#include "uapi/iommufd.h"
#include "uapi/iommufd_test.h"

namespace fastmap::sim {

namespace {

using namespace fastmap::uapi;

struct IoctlOp {
  unsigned nr;
  std::size_t size;      // sizeof the kernel struct
  std::size_t min_size;  // offsetofend of the last mandatory field
  int (*handler)(Ucmd&);
  int min_version;       // first kernel version (major*100+minor) that has the command
  bool test_only;        // exists only with CONFIG_IOMMUFD_TEST
};

#define FM_OP(nr, S, last, fn, ver, test) \
  IoctlOp { nr, sizeof(S), offsetof(S, last) + sizeof(S::last), fn, ver, test }

// Sorted by nr. Commands the simulator does not model (VIOMMU_ALLOC, VDEVICE_ALLOC from
// 6.13, IOAS_CHANGE_PROCESS from 6.14) have no entry and answer ENOTTY.
constexpr std::array kOps = {
    FM_OP(0x80, iommu_destroy, id, iommufd_destroy, 602, false),
    FM_OP(0x81, iommu_ioas_alloc, out_ioas_id, iommufd_ioas_alloc, 602, false),
    FM_OP(0x82, iommu_ioas_allow_iovas, allowed_iovas, iommufd_ioas_allow_iovas, 602, false),
    FM_OP(0x83, iommu_ioas_copy, src_iova, iommufd_ioas_copy, 602, false),
    FM_OP(0x84, iommu_ioas_iova_ranges, out_iova_alignment, iommufd_ioas_iova_ranges, 602, false),
    FM_OP(0x85, iommu_ioas_map, iova, iommufd_ioas_map, 602, false),
    FM_OP(0x86, iommu_ioas_unmap, length, iommufd_ioas_unmap, 602, false),
    FM_OP(0x87, iommu_option, val64, iommufd_option, 602, false),
    FM_OP(0x88, iommu_vfio_ioas, reserved, iommufd_vfio_ioas, 602, false),
    FM_OP(0x89, iommu_hwpt_alloc, reserved, iommufd_hwpt_alloc, 606, false),
    FM_OP(0x8a, iommu_hw_info, reserved, iommufd_get_hw_info, 606, false),
    FM_OP(0x8b, iommu_hwpt_set_dirty_tracking, reserved, iommufd_hwpt_set_dirty_tracking, 607,
          false),
    FM_OP(0x8c, iommu_hwpt_get_dirty_bitmap, data, iommufd_hwpt_get_dirty_bitmap, 607, false),
    FM_OP(0x8d, iommu_hwpt_invalidate, reserved, iommufd_hwpt_invalidate, 608, false),
    FM_OP(0x8e, iommu_fault_alloc, out_fault_fd, iommufd_fault_alloc, 611, false),
    FM_OP(0x8f, iommu_ioas_map_file, iova, iommufd_ioas_map_file, 613, false),
    FM_OP(0xa0, iommu_test_cmd, last, iommufd_test, 602, true),
};

#undef FM_OP

constexpr unsigned kTestNr = IOMMUFD_CMD_BASE + 32;  // IOMMU_TEST_CMD

// The largest struct any command takes: the dispatcher's stack buffer (union ucmd_buffer).
constexpr std::size_t kMaxCmdSize = [] {
  std::size_t m = 0;
  for (const auto& op : kOps) m = op.size > m ? op.size : m;
  return m;
}();

const IoctlOp* find_op(unsigned nr, const SimConfig& cfg) {
  for (const auto& op : kOps) {
    if (op.nr != nr) continue;
    if (cfg.kernel_version < op.min_version) return nullptr;
    if (op.test_only && !cfg.iommufd_test) return nullptr;
    return &op;
  }
  return nullptr;
}

// The last nr of the kernel's table: with CONFIG_IOMMUFD_TEST it reaches IOMMU_TEST_CMD,
// otherwise it ends at the newest command of that release. Numbers past it go to the VFIO
// compat handler without reading the argument; numbers inside it read the size first.
unsigned table_end(const SimConfig& cfg) {
  if (cfg.iommufd_test) return kTestNr;
  return cfg.kernel_version >= 613 ? 0x91 : 0x8e;
}

class IommufdFile final : public File {
 public:
  explicit IommufdFile(std::shared_ptr<IommufdCtx> ctx) : ctx_(std::move(ctx)) {}

  long ioctl(unsigned long request, void* arg) noexcept override {
    try {
      return dispatch(request, reinterpret_cast<std::uint64_t>(arg));
    } catch (const std::bad_alloc&) {
      return -ENOMEM;
    }
  }

  const std::shared_ptr<IommufdCtx>& ctx() const noexcept { return ctx_; }

  // /dev/iommu is a misc device with a dynamic minor; this is the one the simulator shows.
  bool chardev(unsigned* major, unsigned* minor) const noexcept override {
    *major = 10;
    *minor = kIommufdMinor;
    return true;
  }

 private:
  long dispatch(unsigned long cmd, std::uint64_t arg) {
    IommufdCtx& ctx = *ctx_;
    const unsigned nr = cmd & 0xff;
    if (nr < IOMMUFD_CMD_BASE || nr > table_end(ctx.config)) {
      std::lock_guard<std::mutex> g(ctx.mu);
      return iommufd_vfio_compat_ioctl(ctx, cmd, arg);
    }
    std::uint32_t user_size;
    if (int rc = copy_from_user(&user_size, arg, sizeof user_size)) return rc;
    const IoctlOp* op = find_op(nr, ctx.config);
    if (!op || iommufd_io(nr) != cmd) return -ENOTTY;
    if (user_size < op->min_size) return -EINVAL;

    // copy_struct_from_user.
    alignas(8) unsigned char buf[kMaxCmdSize] = {};
    const std::size_t n = user_size < op->size ? user_size : op->size;
    if (int rc = copy_from_user(buf, arg, n)) return rc;
    if (user_size > op->size) {
      unsigned char tail[256];
      for (std::uint64_t off = op->size; off < user_size;) {
        std::size_t chunk = user_size - off < sizeof tail ? user_size - off : sizeof tail;
        if (int rc = copy_from_user(tail, arg + off, chunk)) return rc;
        for (std::size_t i = 0; i < chunk; ++i) {
          if (tail[i]) return -E2BIG;
        }
        off += chunk;
      }
    }
    Ucmd u{ctx, arg, user_size, buf, op->size};
    std::lock_guard<std::mutex> g(ctx.mu);
    return op->handler(u);
  }

  std::shared_ptr<IommufdCtx> ctx_;
};

}  // namespace

std::shared_ptr<File> iommufd_open(KernelCore& kernel) {
  return std::make_shared<IommufdFile>(std::make_shared<IommufdCtx>(kernel));
}

std::shared_ptr<IommufdCtx> iommufd_ctx_from_file(const std::shared_ptr<File>& file) {
  auto* f = dynamic_cast<IommufdFile*>(file.get());
  return f ? f->ctx() : nullptr;
}

}  // namespace fastmap::sim
