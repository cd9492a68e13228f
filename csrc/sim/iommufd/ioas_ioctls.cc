// IOAS ioctls: ALLOC, MAP, MAP_FILE, COPY, UNMAP, ALLOW_IOVAS, IOVA_RANGES, and OPTION
// (global RLIMIT_MODE and per-IOAS HUGE_PAGES). Check order and errnos follow ioas.c and
// io_pagetable.c.
#include <fcntl.h>

#include <cerrno>
#include <cstddef>
#include <limits>
#include <map>
#include <memory>

#include "sim/iommufd/ctx.h"
#include "sim/iommufd/ioas.h"
#include "sim/iommufd/ioctls.h"
#include "sim/core/user_memory.h"
#include "uapi/iommufd.h"

namespace fastmap::sim {

using namespace fastmap::uapi;

namespace {

constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();
constexpr std::uint32_t kMapFlags =
    IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE;

int conv_prot(std::uint32_t flags) {
  return ((flags & IOMMU_IOAS_MAP_WRITEABLE) ? kIommuWrite : 0) |
         ((flags & IOMMU_IOAS_MAP_READABLE) ? kIommuRead : 0);
}

// iopt_alloc_pages' length rule: at most SIZE_MAX - PAGE_SIZE bytes, and not empty.
bool bad_pages_length(std::uint64_t length) {
  return length == 0 || length > kMax - host_page_size();
}

}  // namespace

// iopt_alloc_user_pages' checks. 6.13 (the MAP_FILE rework) tests `uptr + length` for
// overflow before the length rule; 6.12 the other way round.
int check_user_pages_args(const IommufdCtx& ctx, std::uint64_t uptr, std::uint64_t length) {
  const bool overflow = uptr + length < uptr;
  if (ctx.config.kernel_version >= 613 && overflow) return -EOVERFLOW;
  if (bad_pages_length(length)) return -EINVAL;
  if (overflow) return -EOVERFLOW;
  return 0;
}

namespace {

}  // namespace

void Ioas::destroy(IommufdCtx& /*ctx*/) {
  std::uint64_t unmapped;
  iopt.unmap(0, kMax, &unmapped);
}

int iommufd_ioas_alloc(Ucmd& u) {
  auto& cmd = u.get<iommu_ioas_alloc>();
  if (cmd.flags) return -EOPNOTSUPP;
  auto ioas = std::make_shared<Ioas>(u.ctx);
  if (int rc = u.ctx.objects.add(ioas)) return rc;
  cmd.out_ioas_id = ioas->id;
  if (int rc = u.respond()) {
    u.ctx.remove_object(ioas);  // the id was never visible: abort the creation
    return rc;
  }
  return 0;
}

int iommufd_ioas_map(Ucmd& u) {
  auto& cmd = u.get<iommu_ioas_map>();
  if ((cmd.flags & ~kMapFlags) || cmd.reserved) return -EOPNOTSUPP;
  if (cmd.iova >= kMax || cmd.length >= kMax) return -EOVERFLOW;
  if (!(cmd.flags & (IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE))) return -EINVAL;
  auto ioas = u.ctx.objects.get<Ioas>(cmd.ioas_id);
  if (!ioas) return -ENOENT;
  if (int rc = check_user_pages_args(u.ctx, cmd.user_va, cmd.length)) return rc;
  auto pages = IoptPages::user(cmd.user_va, cmd.length, cmd.flags & IOMMU_IOAS_MAP_WRITEABLE,
                               u.ctx.account_mode());
  std::uint64_t iova = cmd.iova;
  int rc = ioas->iopt.map_pages({{pages, pages->first_byte(), cmd.length}}, cmd.length, &iova,
                                conv_prot(cmd.flags), !(cmd.flags & IOMMU_IOAS_MAP_FIXED_IOVA));
  if (rc) return rc;
  cmd.iova = iova;
  return u.respond();  // a fault here leaves the mapping in place, as in the kernel
}

int iommufd_ioas_map_file(Ucmd& u) {
  auto& cmd = u.get<iommu_ioas_map_file>();
  if (cmd.flags & ~kMapFlags) return -EOPNOTSUPP;
  if (cmd.iova >= kMax || cmd.length >= kMax) return -EOVERFLOW;
  if (!(cmd.flags & (IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE))) return -EINVAL;
  auto ioas = u.ctx.objects.get<Ioas>(cmd.ioas_id);
  if (!ioas) return -ENOENT;
  if (cmd.fd < 0 || ::fcntl(cmd.fd, F_GETFD) < 0) return -EBADF;
  // iopt_alloc_file_pages.
  if (cmd.length && cmd.start + (cmd.length - 1) < cmd.start) return -EOVERFLOW;
  if (bad_pages_length(cmd.length)) return -EINVAL;
  std::shared_ptr<IoptPages> pages;
  if (int rc = IoptPages::file(cmd.fd, cmd.start, cmd.length,
                               cmd.flags & IOMMU_IOAS_MAP_WRITEABLE, u.ctx.account_mode(),
                               &pages)) {
    return rc;
  }
  std::uint64_t iova = cmd.iova;
  int rc = ioas->iopt.map_pages({{pages, pages->first_byte(), cmd.length}}, cmd.length, &iova,
                                conv_prot(cmd.flags), !(cmd.flags & IOMMU_IOAS_MAP_FIXED_IOVA));
  if (rc) return rc;
  cmd.iova = iova;
  return u.respond();
}

int iommufd_ioas_copy(Ucmd& u) {
  auto& cmd = u.get<iommu_ioas_copy>();
  if (cmd.flags & ~kMapFlags) return -EOPNOTSUPP;
  if (cmd.length >= kMax || cmd.src_iova >= kMax || cmd.dst_iova >= kMax) return -EOVERFLOW;
  if (!(cmd.flags & (IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE))) return -EINVAL;
  auto src = u.ctx.objects.get<Ioas>(cmd.src_ioas_id);
  if (!src) return -ENOENT;
  std::vector<PagesSlice> slices;
  if (int rc = src->iopt.get_pages(cmd.src_iova, cmd.length, &slices)) return rc;
  auto dst = u.ctx.objects.get<Ioas>(cmd.dst_ioas_id);
  if (!dst) return -ENOENT;
  std::uint64_t iova = cmd.dst_iova;
  int rc = dst->iopt.map_pages(slices, cmd.length, &iova, conv_prot(cmd.flags),
                               !(cmd.flags & IOMMU_IOAS_MAP_FIXED_IOVA));
  if (rc) return rc;
  cmd.dst_iova = iova;
  return u.respond();
}

int iommufd_ioas_unmap(Ucmd& u) {
  auto& cmd = u.get<iommu_ioas_unmap>();
  auto ioas = u.ctx.objects.get<Ioas>(cmd.ioas_id);
  if (!ioas) return -ENOENT;
  std::uint64_t unmapped = 0;
  if (cmd.iova == 0 && cmd.length == kMax) {
    // Unmap all: succeeds on an empty IOAS.
    if (int rc = ioas->iopt.unmap(0, kMax, &unmapped)) return rc;
  } else {
    if (cmd.iova >= kMax || cmd.length >= kMax) return -EOVERFLOW;
    if (cmd.length == 0) return -EINVAL;
    if (cmd.iova + (cmd.length - 1) < cmd.iova) return -EOVERFLOW;
    // Not atomic: areas removed before a partially covered one stay removed.
    if (int rc = ioas->iopt.unmap(cmd.iova, cmd.iova + (cmd.length - 1), &unmapped)) return rc;
    if (unmapped == 0) return -ENOENT;
  }
  cmd.length = unmapped;
  return u.respond();
}

int iommufd_ioas_allow_iovas(Ucmd& u) {
  auto& cmd = u.get<iommu_ioas_allow_iovas>();
  if (cmd.reserved) return -EOPNOTSUPP;
  auto ioas = u.ctx.objects.get<Ioas>(cmd.ioas_id);
  if (!ioas) return -ENOENT;
  std::map<std::uint64_t, std::uint64_t> loaded;  // start -> last, to reject overlaps
  std::vector<IovaSpan> ranges;
  for (std::uint32_t i = 0; i < cmd.num_iovas; ++i) {
    iommu_iova_range r;
    if (copy_from_user(&r, cmd.allowed_iovas + std::uint64_t{i} * sizeof r, sizeof r)) {
      return -EFAULT;
    }
    if (r.start >= r.last) return -EINVAL;  // single-byte ranges are rejected too
    auto it = loaded.upper_bound(r.last);
    if (it != loaded.begin() && std::prev(it)->second >= r.start) return -EINVAL;
    loaded.emplace(r.start, r.last);
    ranges.push_back({r.start, r.last});
  }
  return ioas->iopt.set_allowed(ranges);
}

int iommufd_ioas_iova_ranges(Ucmd& u) {
  auto& cmd = u.get<iommu_ioas_iova_ranges>();
  if (cmd.reserved) return -EOPNOTSUPP;
  auto ioas = u.ctx.objects.get<Ioas>(cmd.ioas_id);
  if (!ioas) return -ENOENT;
  const std::uint32_t max = cmd.num_iovas;
  const auto holes = ioas->iopt.usable_ranges();
  for (std::size_t i = 0; i < holes.size() && i < max; ++i) {
    iommu_iova_range r{holes[i].start, holes[i].last};
    if (copy_to_user(cmd.allowed_iovas + i * sizeof r, &r, sizeof r)) return -EFAULT;
  }
  // The real count and the alignment go back even when the array was too small, so the
  // caller can retry with the right size.
  cmd.num_iovas = static_cast<std::uint32_t>(holes.size());
  cmd.out_iova_alignment = ioas->iopt.iova_alignment();
  if (int rc = u.respond()) return rc;
  return holes.size() > max ? -EMSGSIZE : 0;
}

namespace {

int option_rlimit_mode(IommufdCtx& ctx, iommu_option& cmd) {
  if (cmd.object_id) return -EOPNOTSUPP;
  if (cmd.op == IOMMU_OPTION_OP_GET) {
    cmd.val64 = ctx.account_per_mm ? 1 : 0;
    return 0;
  }
  if (cmd.op == IOMMU_OPTION_OP_SET) {
    if (!ctx.config.cap_sys_resource) return -EPERM;
    if (!ctx.objects.empty()) return -EBUSY;
    if (cmd.val64 > 1) return -EINVAL;
    ctx.account_per_mm = cmd.val64 == 1;
    return 0;
  }
  return -EOPNOTSUPP;
}

int option_huge_pages(IommufdCtx& ctx, iommu_option& cmd) {
  auto ioas = ctx.objects.get<Ioas>(cmd.object_id);
  if (!ioas) return -ENOENT;
  if (cmd.op == IOMMU_OPTION_OP_GET) {
    cmd.val64 = ioas->iopt.large_pages_disabled() ? 0 : 1;
    return 0;
  }
  if (cmd.op == IOMMU_OPTION_OP_SET) {
    if (cmd.val64 == 0) return ioas->iopt.disable_large_pages();
    if (cmd.val64 == 1) {
      ioas->iopt.enable_large_pages();
      return 0;
    }
    return -EINVAL;
  }
  return -EOPNOTSUPP;
}

}  // namespace

int iommufd_option(Ucmd& u) {
  auto& cmd = u.get<iommu_option>();
  if (cmd.reserved) return -EOPNOTSUPP;
  int rc;
  switch (cmd.option_id) {
    case IOMMU_OPTION_RLIMIT_MODE:
      rc = option_rlimit_mode(u.ctx, cmd);
      break;
    case IOMMU_OPTION_HUGE_PAGES:
      rc = option_huge_pages(u.ctx, cmd);
      break;
    default:
      return -EOPNOTSUPP;
  }
  if (rc) return rc;
  // Only val64 goes back.
  return copy_to_user(u.ubuffer + offsetof(iommu_option, val64), &cmd.val64, sizeof cmd.val64);
}

}  // namespace fastmap::sim
