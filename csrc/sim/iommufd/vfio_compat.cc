// VFIO compatibility on /dev/iommu (vfio_compat.c): IOMMU_VFIO_IOAS, which picks the IOAS
// the legacy container ioctls act on, and the type1 container ioctls themselves (numbers
// below 0x80 and past the iommufd table). There is no dirty tracking through compat, and
// no no-iommu mode (CONFIG_VFIO_NOIOMMU is off).
#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <limits>

#include "sim/iommufd/ctx.h"
#include "sim/iommufd/hwpt.h"
#include "sim/iommufd/ioas.h"
#include "sim/iommufd/ioctls.h"
#include "sim/core/user_memory.h"
#include "uapi/iommufd.h"
#include "uapi/vfio.h"

namespace fastmap::sim {

using namespace fastmap::uapi;

namespace {

constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();

std::shared_ptr<Ioas> compat_ioas(IommufdCtx& ctx) {
  return ctx.vfio_ioas_id ? ctx.objects.get<Ioas>(ctx.vfio_ioas_id) : nullptr;
}

long map_dma(IommufdCtx& ctx, std::uint64_t arg) {
  constexpr std::size_t minsz = offsetof(vfio_iommu_type1_dma_map, size) + 8;
  vfio_iommu_type1_dma_map map{};
  if (copy_from_user(&map, arg, minsz)) return -EFAULT;
  if (map.argsz < minsz || (map.flags & ~(VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE))) {
    return -EINVAL;
  }
  auto ioas = compat_ioas(ctx);
  if (!ioas) return -ENODEV;
  const int prot = ((map.flags & VFIO_DMA_MAP_FLAG_READ) ? kIommuRead : 0) |
                   ((map.flags & VFIO_DMA_MAP_FLAG_WRITE) ? kIommuWrite : 0);
  // iopt_map_user_pages at a fixed IOVA.
  if (int rc = check_user_pages_args(ctx, map.vaddr, map.size)) return rc;
  auto pages = IoptPages::user(map.vaddr, map.size, prot & kIommuWrite, ctx.account_mode());
  std::uint64_t iova = map.iova;
  return ioas->iopt.map_pages({{pages, pages->first_byte(), map.size}}, map.size, &iova, prot, false);
}

long unmap_dma(IommufdCtx& ctx, std::uint64_t arg) {
  constexpr std::size_t minsz = offsetof(vfio_iommu_type1_dma_unmap, size) + 8;
  vfio_iommu_type1_dma_unmap unmap{};
  if (copy_from_user(&unmap, arg, minsz)) return -EFAULT;
  // GET_DIRTY_BITMAP is obsolete here; only ALL is understood.
  if (unmap.argsz < minsz || (unmap.flags & ~VFIO_DMA_UNMAP_FLAG_ALL)) return -EINVAL;
  auto ioas = compat_ioas(ctx);
  if (!ioas) return -ENODEV;
  std::uint64_t unmapped = 0;
  int rc;
  if (unmap.flags & VFIO_DMA_UNMAP_FLAG_ALL) {
    if (unmap.iova != 0 || unmap.size != 0) return -EINVAL;
    rc = ioas->iopt.unmap(0, kMax, &unmapped);
  } else {
    if (ioas->iopt.large_pages_disabled()) {
      // Type1 v1 could unmap part of a mapping: cut the areas at both ends first.
      std::vector<std::uint64_t> cuts{unmap.iova + unmap.size - 1};
      if (unmap.iova) cuts.push_back(unmap.iova - 1);
      if ((rc = ioas->iopt.cut(cuts))) return rc;
    }
    if (unmap.size == 0) {
      rc = -EINVAL;
    } else if (unmap.iova + (unmap.size - 1) < unmap.iova) {
      rc = -EOVERFLOW;
    } else {
      // An empty range succeeds here (afb47765f923, in 6.12 stable), unlike IOAS_UNMAP.
      rc = ioas->iopt.unmap(unmap.iova, unmap.iova + (unmap.size - 1), &unmapped);
    }
  }
  // The size goes back even on failure.
  unmap.size = unmapped;
  if (copy_to_user(arg, &unmap, minsz)) return -EFAULT;
  return rc;
}

long check_extension(IommufdCtx& ctx, std::uint64_t type) {
  switch (type) {
    case VFIO_TYPE1_IOMMU:
    case VFIO_TYPE1v2_IOMMU:
    case VFIO_UNMAP_ALL:
      return 1;
    case VFIO_DMA_CC_IOMMU: {
      auto ioas = compat_ioas(ctx);
      if (!ioas) return -ENODEV;
      for (const Hwpt* h : ioas->hwpts) {
        if (!h->domain->model().enforce_cache_coherency) return 0;
      }
      return 1;
    }
    default:  // NOIOMMU (not configured), NESTING, UPDATE_VADDR, unknown
      return 0;
  }
}

long set_iommu(IommufdCtx& ctx, std::uint64_t type) {
  if (type != VFIO_TYPE1_IOMMU && type != VFIO_TYPE1v2_IOMMU) return -EINVAL;
  auto ioas = compat_ioas(ctx);
  if (!ioas) return -ENODEV;  // VFIO wants a group first
  // Type1 v1 may unmap inside a mapping; PAGE_SIZE IOPTEs make that possible.
  if (type == VFIO_TYPE1_IOMMU) return ioas->iopt.disable_large_pages();
  return 0;
}

// iommufd_get_pagesizes: the domains' common page sizes (sub-page sizes folded into
// PAGE_SIZE), at least the IOAS alignment.
std::uint64_t compat_pgsizes(const Ioas& ioas) {
  const std::uint64_t ps = host_page_size();
  std::uint64_t bitmap = kMax;
  for (const auto& d : ioas.iopt.domains()) bitmap &= d->model().pgsize_bitmap;
  if (bitmap & (ps - 1)) bitmap = (bitmap & ~(ps - 1)) | ps;
  return std::max(bitmap, ioas.iopt.iova_alignment());
}

// A capability filler: writes into [cur, cur+avail) when it fits, returns its size.
int fill_cap_dma_avail(const Ioas&, std::uint64_t cur, std::uint64_t avail) {
  vfio_iommu_type1_info_dma_avail cap{};
  cap.header.id = VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL;
  cap.header.version = 1;
  cap.avail = std::numeric_limits<std::uint32_t>::max();  // iommufd has no entry limit
  constexpr std::size_t size = offsetof(vfio_iommu_type1_info_dma_avail, avail) + 4;
  if (avail >= size && copy_to_user(cur, &cap, size)) return -EFAULT;
  return static_cast<int>(size);
}

int fill_cap_iova(const Ioas& ioas, std::uint64_t cur, std::uint64_t avail) {
  vfio_iommu_type1_info_cap_iova_range cap{};
  cap.header.id = VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE;
  cap.header.version = 1;
  const auto holes = ioas.iopt.usable_ranges();
  auto size_for = [](std::uint64_t n) { return sizeof cap + n * sizeof(vfio_iova_range); };
  for (const auto& h : holes) {
    vfio_iova_range r{h.start, h.last};
    if (avail >= size_for(cap.nr_iovas + 1) &&
        copy_to_user(cur + size_for(cap.nr_iovas), &r, sizeof r)) {
      return -EFAULT;
    }
    ++cap.nr_iovas;
  }
  if (avail >= size_for(cap.nr_iovas) && copy_to_user(cur, &cap, sizeof cap)) return -EFAULT;
  return static_cast<int>(size_for(cap.nr_iovas));
}

long get_info(IommufdCtx& ctx, std::uint64_t arg) {
  std::size_t minsz = offsetof(vfio_iommu_type1_info, iova_pgsizes) + 8;
  vfio_iommu_type1_info info{};
  if (copy_from_user(&info, arg, minsz)) return -EFAULT;
  if (info.argsz < minsz) return -EINVAL;
  minsz = std::min<std::size_t>(info.argsz, sizeof info);
  auto ioas = compat_ioas(ctx);
  if (!ioas) return -ENODEV;
  info.flags = VFIO_IOMMU_INFO_PGSIZES;
  info.iova_pgsizes = compat_pgsizes(*ioas);
  info.cap_offset = 0;

  using Fill = int (*)(const Ioas&, std::uint64_t, std::uint64_t);
  static constexpr Fill kFills[] = {fill_cap_dma_avail, fill_cap_iova};
  std::uint64_t total = sizeof info;
  std::uint64_t last_cap = 0;
  for (Fill fill : kFills) {
    int size = info.argsz > total ? fill(*ioas, arg + total, info.argsz - total) : fill(*ioas, 0, 0);
    if (size < 0) return size;
    const std::uint64_t aligned = (static_cast<std::uint64_t>(size) + 7) & ~7ull;
    if (last_cap && info.argsz >= total) {
      const auto next = static_cast<std::uint32_t>(total);
      if (copy_to_user(last_cap + offsetof(vfio_info_cap_header, next), &next, sizeof next)) {
        return -EFAULT;
      }
    }
    last_cap = arg + total;
    total += aligned;
  }
  // Too small a buffer gets what fits, and argsz says how much all caps need.
  if (info.argsz >= total) info.cap_offset = sizeof info;
  info.argsz = static_cast<std::uint32_t>(total);
  info.flags |= VFIO_IOMMU_INFO_CAPS;
  return copy_to_user(arg, &info, minsz) ? -EFAULT : 0;
}

}  // namespace

int iommufd_vfio_ioas(Ucmd& u) {
  auto& cmd = u.get<iommu_vfio_ioas>();
  if (cmd.reserved) return -EOPNOTSUPP;
  switch (cmd.op) {
    case IOMMU_VFIO_IOAS_GET: {
      auto ioas = compat_ioas(u.ctx);
      if (!ioas) return -ENODEV;
      cmd.ioas_id = ioas->id;
      return u.respond();
    }
    case IOMMU_VFIO_IOAS_SET:
      if (!u.ctx.objects.get<Ioas>(cmd.ioas_id)) return -ENOENT;
      u.ctx.vfio_ioas_id = cmd.ioas_id;
      return 0;
    case IOMMU_VFIO_IOAS_CLEAR:
      u.ctx.vfio_ioas_id = 0;
      return 0;
    default:
      return -EOPNOTSUPP;
  }
}

long iommufd_vfio_compat_ioctl(IommufdCtx& ctx, unsigned long cmd, std::uint64_t arg) {
  switch (cmd) {
    case VFIO_GET_API_VERSION:
      return VFIO_API_VERSION;
    case VFIO_SET_IOMMU:
      return set_iommu(ctx, arg);
    case VFIO_CHECK_EXTENSION:
      return check_extension(ctx, arg);
    case VFIO_IOMMU_GET_INFO:
      return get_info(ctx, arg);
    case VFIO_IOMMU_MAP_DMA:
      return map_dma(ctx, arg);
    case VFIO_IOMMU_UNMAP_DMA:
      return unmap_dma(ctx, arg);
    default:  // VFIO_IOMMU_DIRTY_PAGES included: no dirty tracking through compat
      return -ENOTTY;
  }
}

}  // namespace fastmap::sim
