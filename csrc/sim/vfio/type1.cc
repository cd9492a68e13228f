#include "sim/vfio/type1.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <new>

#include "sim/core/kernel_core.h"
#include "sim/core/user_memory.h"
#include "uapi/vfio.h"

namespace fastmap::sim::vfio {

namespace {

using namespace fastmap::uapi;

constexpr std::uint64_t kU64Max = std::numeric_limits<std::uint64_t>::max();
// DIRTY_BITMAP_PAGES_MAX is INT_MAX pages; its bitmap rounded to u64s is 256 MiB.
constexpr std::uint64_t kDirtyBitmapPagesMax = 0x7fffffff;
constexpr std::uint64_t dirty_bitmap_bytes(std::uint64_t npages) { return ((npages + 63) / 64) * 8; }
constexpr std::uint64_t kDirtyBitmapSizeMax = dirty_bitmap_bytes(kDirtyBitmapPagesMax);
// x86-64 user address space (TASK_SIZE_MAX), for access_ok().
constexpr std::uint64_t kTaskSizeMax = (1ull << 47) - 4096;

std::uint64_t uptr(const void* p) { return reinterpret_cast<std::uint64_t>(p); }
std::uint64_t page_size() { return host_page_size(); }
std::uint64_t page_mask() { return ~(page_size() - 1); }
std::uint64_t low_bit(std::uint64_t x) { return x & (~x + 1); }

bool access_ok(std::uint64_t addr, std::uint64_t size) {
  return size <= kTaskSizeMax && addr <= kTaskSizeMax - size;
}

int verify_bitmap_size(std::uint64_t npages, std::uint64_t bitmap_size) {
  if (npages == 0 || bitmap_size == 0 || bitmap_size > kDirtyBitmapSizeMax ||
      bitmap_size < dirty_bitmap_bytes(npages)) {
    return -EINVAL;
  }
  return 0;
}

int prot_of(std::uint32_t flags) {
  int prot = 0;
  if (flags & VFIO_DMA_MAP_FLAG_WRITE) prot |= kIommuWrite;
  if (flags & VFIO_DMA_MAP_FLAG_READ) prot |= kIommuRead;
  return prot;
}

// Remove [lo, hi] from a sorted list of ranges.
void exclude(std::vector<IovaRange>& list, std::uint64_t lo, std::uint64_t hi) {
  std::vector<IovaRange> out;
  for (const IovaRange& r : list) {
    if (r.last < lo || r.start > hi) {
      out.push_back(r);
      continue;
    }
    if (r.start < lo) out.push_back({r.start, lo - 1});
    if (r.last > hi) out.push_back({hi + 1, r.last});
  }
  list.swap(out);
}

// Append a capability to a chain being built in `buf` (vfio_info_cap_add): the size is
// rounded up to 8 bytes and `next` offsets are relative to the chain's start until shifted.
template <class T>
T* cap_add(std::vector<std::uint8_t>& buf, std::size_t size, std::uint16_t id,
           std::uint16_t version) {
  size = (size + 7) & ~std::size_t{7};
  const std::size_t at = buf.size();
  buf.resize(at + size, 0);
  auto* hdr = reinterpret_cast<vfio_info_cap_header*>(buf.data() + at);
  hdr->id = id;
  hdr->version = version;
  if (at != 0) {
    std::size_t cur = 0;
    for (;;) {
      auto* h = reinterpret_cast<vfio_info_cap_header*>(buf.data() + cur);
      if (h->next == 0) {
        h->next = static_cast<std::uint32_t>(at);
        break;
      }
      cur = h->next;
    }
  }
  return reinterpret_cast<T*>(buf.data() + at);
}

}  // namespace

Type1::Type1(KernelCore& kernel, bool v2)
    : kernel_(kernel),
      config_(kernel.config()),
      v2_(v2),
      dma_avail_(config_.dma_entry_limit),
      pgsize_bitmap_(page_mask()) {}

Type1::~Type1() {
  // vfio_iommu_type1_release: every mapping is unpinned, every device loses its domain.
  for (auto& [iova, dma] : dmas_) unmap_and_unpin(dma);
  for (DomainSlot& s : domains_) {
    for (VfioGroup* grp : s.groups) {
      for (auto& dev : grp->devices) dev->pci->set_domain(nullptr);
    }
  }
  uncharge(locked_pages_);
}

bool Type1::charge(std::uint64_t npages) {
  // vfio_lock_acct: the mm's locked_vm against RLIMIT_MEMLOCK unless CAP_IPC_LOCK.
  auto& locked = kernel_.locked_vm(true);
  const std::uint64_t limit = config_.rlimit_memlock / page_size();
  std::uint64_t cur = locked.load();
  do {
    if (!config_.cap_ipc_lock && cur + npages > limit) return false;
  } while (!locked.compare_exchange_weak(cur, cur + npages));
  locked_pages_ += npages;
  return true;
}

void Type1::uncharge(std::uint64_t npages) {
  if (npages == 0) return;
  kernel_.locked_vm(true).fetch_sub(npages);
  locked_pages_ -= npages;
}

std::uint64_t Type1::min_pgsize() const { return low_bit(pgsize_bitmap_); }

long Type1::check_extension_unset(unsigned long ext) {
  switch (ext) {
    case VFIO_TYPE1_IOMMU:
    case VFIO_TYPE1v2_IOMMU:
    case VFIO_UNMAP_ALL:
      return 1;
    default:
      return 0;  // SPAPR, EEH, NOIOMMU (no unsafe no-IOMMU mode), nesting, UPDATE_VADDR
  }
}

long Type1::check_extension(unsigned long ext) const {
  if (ext != VFIO_DMA_CC_IOMMU) return check_extension_unset(ext);
  for (const DomainSlot& s : domains_) {
    if (!s.model.enforce_cache_coherency) return 0;
  }
  return 1;
}

long Type1::ioctl(unsigned long request, void* arg) {
  switch (request) {
    case VFIO_IOMMU_GET_INFO: return get_info(arg);
    case VFIO_IOMMU_MAP_DMA: return map_dma(arg);
    case VFIO_IOMMU_UNMAP_DMA: return unmap_dma(arg);
    case VFIO_IOMMU_DIRTY_PAGES: return dirty_pages(arg);
    default: return -ENOTTY;
  }
}

int Type1::attach_group(VfioGroup& group) {
  if (group.devices.empty()) return -ENODEV;
  const IommuModel& model = group.devices.front()->pci->iommu();
  // Existing mappings must fit the new domain's aperture and avoid its reserved regions.
  for (const auto& [iova, dma] : dmas_) {
    const std::uint64_t last = iova + dma.size - 1;
    if (iova < model.aperture_start || last > model.aperture_last) return -EINVAL;
    for (const IovaRange& r : model.reserved) {
      if (!(last < r.start || iova > r.last)) return -EINVAL;
    }
  }
  auto slot = std::find_if(domains_.begin(), domains_.end(),
                           [&](const DomainSlot& s) { return s.model.kind == model.kind; });
  if (slot == domains_.end()) {
    // A new domain gets every existing mapping (vfio_iommu_replay). The first domain pins
    // and charges the pages; later ones reuse the pages the first one pinned.
    const bool first = domains_.empty();
    auto domain = std::make_shared<Domain>(model, model.dirty_tracking);
    std::vector<Domain*> target{domain.get()};
    std::vector<Dma*> done;
    for (auto& [iova, dma] : dmas_) {
      int rc = first ? pin_and_map(dma, target, true)
                     : domain->map(dma.iova, dma.hold.addr(), dma.size, dma.prot);
      if (rc != 0) {
        if (first) {
          for (Dma* d : done) {
            uncharge(d->size / page_size());
            d->iommu_mapped = false;
            d->hold = PageHold();
          }
        }
        return rc;
      }
      done.push_back(&dma);
    }
    domains_.push_back(DomainSlot{model, std::move(domain), {}});
    slot = std::prev(domains_.end());
  }
  slot->groups.push_back(&group);
  for (auto& dev : group.devices) dev->pci->set_domain(slot->domain);
  recompute_geometry();
  return 0;
}

void Type1::detach_group(VfioGroup& group) {
  for (auto it = domains_.begin(); it != domains_.end(); ++it) {
    auto g = std::find(it->groups.begin(), it->groups.end(), &group);
    if (g == it->groups.end()) continue;
    it->groups.erase(g);
    for (auto& dev : group.devices) dev->pci->set_domain(nullptr);
    if (it->groups.empty()) {
      // The domain goes with its last group; the last domain takes every mapping with it.
      if (domains_.size() == 1) {
        for (auto& [iova, dma] : dmas_) unmap_and_unpin(dma);
        dma_avail_ += static_cast<std::uint32_t>(dmas_.size());
        dmas_.clear();
      }
      domains_.erase(it);
      recompute_geometry();
    }
    return;
  }
}

void Type1::recompute_geometry() {
  // iova_pgsizes: the page sizes every domain supports; sub-page sizes are hidden behind
  // PAGE_SIZE.
  std::uint64_t bm = kU64Max;
  for (const DomainSlot& s : domains_) bm &= s.model.pgsize_bitmap;
  if (bm & ~page_mask()) bm = (bm & page_mask()) | page_size();
  pgsize_bitmap_ = bm;
  // Usable IOVA: the intersection of the apertures minus every reserved region.
  if (domains_.empty()) {
    if (!iova_list_.empty()) iova_list_ = {IovaRange{0, kU64Max}};
    return;
  }
  std::uint64_t lo = 0, hi = kU64Max;
  for (const DomainSlot& s : domains_) {
    lo = std::max(lo, s.model.aperture_start);
    hi = std::min(hi, s.model.aperture_last);
  }
  iova_list_.clear();
  if (lo <= hi) iova_list_.push_back({lo, hi});
  for (const DomainSlot& s : domains_) {
    for (const IovaRange& r : s.model.reserved) exclude(iova_list_, r.start, r.last);
  }
}

int Type1::pin_and_map(Dma& dma, const std::vector<Domain*>& domains, bool account) {
  const std::uint64_t npages = dma.size / page_size();
  const bool write = (dma.prot & kIommuWrite) != 0;
  if (account && !charge(npages)) {
    // Pages are pinned in order and charged as they go: a bad page before the limit is
    // reached is EFAULT, reaching RLIMIT_MEMLOCK first is ENOMEM.
    const std::uint64_t limit = config_.rlimit_memlock / page_size();
    const std::uint64_t cur = kernel_.locked_vm(true).load();
    const std::uint64_t room = cur >= limit ? 0 : limit - cur;
    if (room != 0 && check_user_pages(dma.vaddr, room * page_size(), write)) return -EFAULT;
    return -ENOMEM;
  }
  if (check_user_pages(dma.vaddr, dma.size, write)) {
    if (account) uncharge(npages);
    return -EFAULT;
  }
  dma.hold = PageHold(dma.vaddr, dma.size);
  for (std::size_t i = 0; i < domains.size(); ++i) {
    if (int rc = domains[i]->map(dma.iova, dma.hold.addr(), dma.size, dma.prot)) {
      for (std::size_t j = 0; j < i; ++j) domains[j]->unmap(dma.iova, dma.size);
      if (account) uncharge(npages);
      dma.hold = PageHold();
      return rc;
    }
  }
  dma.iommu_mapped = true;
  return 0;
}

void Type1::unmap_and_unpin(const Dma& dma) {
  if (!dma.iommu_mapped) return;
  for (DomainSlot& s : domains_) s.domain->unmap(dma.iova, dma.size);
  uncharge(dma.size / page_size());
}

std::map<std::uint64_t, Type1::Dma>::iterator Type1::find_dma(std::uint64_t start,
                                                              std::uint64_t size) {
  // vfio_find_dma: an entry overlapping [start, start + size), with the kernel's
  // arithmetic (a zero size finds an entry strictly containing `start`).
  auto it = dmas_.upper_bound(start);
  if (it != dmas_.begin()) {
    auto p = std::prev(it);
    if (start < p->second.iova + p->second.size && start + size > p->second.iova) return p;
  }
  if (it != dmas_.end() && start + size > it->second.iova) return it;
  return dmas_.end();
}

bool Type1::iova_valid(std::uint64_t first, std::uint64_t last) const {
  if (iova_list_.empty()) return true;
  for (const IovaRange& r : iova_list_) {
    if (first >= r.start && last <= r.last) return true;
  }
  return false;
}

long Type1::get_info(void* arg) {
  vfio_iommu_type1_info info{};
  constexpr std::size_t minsz = offsetof(vfio_iommu_type1_info, cap_offset);  // end of pgsizes
  if (copy_from_user(&info, uptr(arg), minsz)) return -EFAULT;
  if (info.argsz < minsz) return -EINVAL;
  const std::size_t out = std::min<std::size_t>(info.argsz, sizeof info);
  info.flags = VFIO_IOMMU_INFO_PGSIZES;
  info.iova_pgsizes = pgsize_bitmap_;
  info.cap_offset = 0;

  // Capabilities, in the kernel's order: migration, DMA entries available, IOVA ranges.
  std::vector<std::uint8_t> caps;
  {
    auto* mig = cap_add<vfio_iommu_type1_info_cap_migration>(
        caps, sizeof(vfio_iommu_type1_info_cap_migration), VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION, 1);
    mig->flags = 0;
    mig->pgsize_bitmap = min_pgsize();
    mig->max_dirty_bitmap_size = kDirtyBitmapSizeMax;
  }
  {
    auto* avail = cap_add<vfio_iommu_type1_info_dma_avail>(
        caps, sizeof(vfio_iommu_type1_info_dma_avail), VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, 1);
    avail->avail = dma_avail_;
  }
  if (!iova_list_.empty()) {
    const std::size_t size = sizeof(vfio_iommu_type1_info_cap_iova_range) +
                             iova_list_.size() * sizeof(vfio_iova_range);
    const std::size_t at = caps.size();
    auto* cap = cap_add<vfio_iommu_type1_info_cap_iova_range>(
        caps, size, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, 1);
    cap->nr_iovas = static_cast<std::uint32_t>(iova_list_.size());
    auto* ranges = reinterpret_cast<vfio_iova_range*>(caps.data() + at + sizeof *cap);
    for (std::size_t i = 0; i < iova_list_.size(); ++i) {
      ranges[i].start = iova_list_[i].start;
      ranges[i].end = iova_list_[i].last;
    }
  }
  info.flags |= VFIO_IOMMU_INFO_CAPS;
  if (info.argsz < sizeof info + caps.size()) {
    // Too small for the chain: report the size needed; no caps are copied.
    info.argsz = static_cast<std::uint32_t>(sizeof info + caps.size());
  } else {
    // vfio_info_cap_shift: chain offsets become relative to the start of the info.
    for (std::size_t cur = 0;;) {
      auto* h = reinterpret_cast<vfio_info_cap_header*>(caps.data() + cur);
      if (h->next == 0) break;
      cur = h->next;
      h->next += sizeof info;
    }
    if (copy_to_user(uptr(arg) + sizeof info, caps.data(), caps.size())) return -EFAULT;
    info.cap_offset = sizeof info;
  }
  return copy_to_user(uptr(arg), &info, out) ? -EFAULT : 0;
}

long Type1::map_dma(void* arg) {
  vfio_iommu_type1_dma_map map{};
  constexpr std::size_t minsz = sizeof map;  // offsetofend(size)
  const std::uint32_t mask = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
  if (copy_from_user(&map, uptr(arg), minsz)) return -EFAULT;
  // VADDR (UPDATE_VADDR) is not modelled; it is refused like an unknown flag.
  if (map.argsz < minsz || (map.flags & ~mask)) return -EINVAL;
  const int prot = prot_of(map.flags);
  if (prot == 0) return -EINVAL;  // neither READ nor WRITE (and no VADDR)
  const std::uint64_t pgsize = min_pgsize();
  if (map.size == 0 || ((map.size | map.iova | map.vaddr) & (pgsize - 1))) return -EINVAL;
  // Wrapping IOVA or VA: EINVAL through 6.17 (EOVERFLOW from 6.18).
  if (map.iova + map.size - 1 < map.iova || map.vaddr + map.size - 1 < map.vaddr) return -EINVAL;
  if (find_dma(map.iova, map.size) != dmas_.end()) return -EEXIST;
  if (dma_avail_ == 0) return -ENOSPC;
  if (!iova_valid(map.iova, map.iova + map.size - 1)) return -EINVAL;

  Dma dma{map.iova, map.size, map.vaddr, prot, false, PageHold(), {}};
  if (!domains_.empty()) {
    std::vector<Domain*> targets;
    for (DomainSlot& s : domains_) targets.push_back(s.domain.get());
    if (int rc = pin_and_map(dma, targets, true)) return rc;
  }
  if (dirty_tracking_) alloc_bitmap(dma, min_pgsize());
  dmas_.emplace(dma.iova, std::move(dma));
  dma_avail_--;
  return 0;
}

long Type1::unmap_dma(void* arg) {
  vfio_iommu_type1_dma_unmap unmap{};
  vfio_bitmap bitmap{};
  constexpr std::size_t minsz = sizeof unmap;  // offsetofend(size)
  // VADDR is not modelled (see map_dma).
  const std::uint32_t mask = VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP | VFIO_DMA_UNMAP_FLAG_ALL;
  if (copy_from_user(&unmap, uptr(arg), minsz)) return -EFAULT;
  if (unmap.argsz < minsz || (unmap.flags & ~mask)) return -EINVAL;
  const bool want_bitmap = (unmap.flags & VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP) != 0;
  const bool unmap_all = (unmap.flags & VFIO_DMA_UNMAP_FLAG_ALL) != 0;
  if (want_bitmap && unmap_all) return -EINVAL;
  if (want_bitmap) {
    if (unmap.argsz < minsz + sizeof bitmap) return -EINVAL;
    if (copy_from_user(&bitmap, uptr(arg) + minsz, sizeof bitmap)) return -EFAULT;
    if (!access_ok(bitmap.data, bitmap.size)) return -EINVAL;
    if (bitmap.pgsize == 0) return -EINVAL;  // the kernel would take __ffs(0)
    const unsigned pgshift = static_cast<unsigned>(std::countr_zero(bitmap.pgsize));
    if (int rc = verify_bitmap_size(unmap.size >> pgshift, bitmap.size)) return rc;
  }

  const std::uint64_t pgsize = min_pgsize();
  std::uint64_t iova = unmap.iova;
  std::uint64_t size = unmap.size;
  if (iova & (pgsize - 1)) return -EINVAL;
  if (unmap_all) {
    if (iova != 0 || size != 0) return -EINVAL;
    size = kU64Max;
  } else if (size == 0 || (size & (pgsize - 1)) || iova + size - 1 < iova) {
    return -EINVAL;
  }
  if (want_bitmap && (!dirty_tracking_ || bitmap.pgsize != pgsize)) return -EINVAL;

  if (v2_ && !unmap_all) {
    // v2: the range may not bisect a mapping at either end.
    auto first = find_dma(iova, 1);
    if (first != dmas_.end() && first->second.iova != iova) return -EINVAL;
    auto last = find_dma(iova + size - 1, 0);
    if (last != dmas_.end() && last->second.iova + last->second.size != iova + size) {
      return -EINVAL;
    }
  }

  std::uint64_t unmapped = 0;
  auto it = dmas_.upper_bound(iova);
  if (it != dmas_.begin() && std::prev(it)->second.iova + std::prev(it)->second.size > iova) {
    --it;
  }
  int rc = 0;
  while (it != dmas_.end()) {
    Dma& dma = it->second;
    if (dma.iova >= iova + size) break;
    // v1: a request starting inside a mapping unmaps nothing from there on.
    if (!v2_ && iova > dma.iova) break;
    if (want_bitmap) {
      rc = update_user_bitmap(bitmap.data, dma, iova, pgsize);
      if (rc != 0) break;
    }
    unmapped += dma.size;
    unmap_and_unpin(dma);
    it = dmas_.erase(it);
    dma_avail_++;
  }
  if (rc != 0) return rc;  // the size is written back only on success
  unmap.size = unmapped;
  return copy_to_user(uptr(arg), &unmap, minsz) ? -EFAULT : 0;
}

void Type1::alloc_bitmap(Dma& dma, std::uint64_t pgsize) {
  const std::uint64_t npages = dma.size / pgsize;
  dma.bitmap.assign(static_cast<std::size_t>((npages + 63) / 64 + 1), 0);
}

int Type1::update_user_bitmap(std::uint64_t user_bitmap, Dma& dma, std::uint64_t base_iova,
                              std::uint64_t pgsize) {
  // As vfio_iommu_type1 does it, on the entry's own bitmap: set the entry's bits (all of
  // them when an IOMMU-backed group is attached and the entry is mapped, since nothing
  // tracks real writes); when the entry does not start on a word of the user's bitmap,
  // shift the bitmap left in place by the bit offset and OR in the whole word the user had
  // there; then copy the words covering [0, nbits + shift). The caller clears bits
  // [0, nbits) afterwards, so bits shifted past nbits stay in the spare bits and come back
  // in a later call (seen on 6.12.95 in the VM).
  const unsigned pgshift = static_cast<unsigned>(std::countr_zero(pgsize));
  const std::uint64_t nbits = dma.size >> pgshift;
  const std::uint64_t bit_offset = (dma.iova - base_iova) >> pgshift;
  const std::uint64_t copy_offset = bit_offset / 64;
  const unsigned shift = static_cast<unsigned>(bit_offset % 64);
  if (dma.bitmap.size() < (nbits + 63) / 64 + 1) alloc_bitmap(dma, pgsize);
  std::vector<std::uint64_t>& bm = dma.bitmap;
  if (!domains_.empty() && dma.iommu_mapped) {
    for (std::uint64_t i = 0; i < nbits / 64; ++i) bm[i] = kU64Max;
    if (nbits % 64) bm[nbits / 64] |= (1ull << (nbits % 64)) - 1;
  }
  const std::uint64_t total = nbits + shift;
  const std::size_t nwords = static_cast<std::size_t>((total + 63) / 64);
  const std::uint64_t base = user_bitmap + copy_offset * 8;
  if (shift != 0) {
    // __bitmap_shift_left over BITS_TO_LONGS(nbits + shift) words: no masking of the top.
    for (std::size_t k = nwords; k-- > 0;) {
      const std::uint64_t lower = k > 0 ? bm[k - 1] >> (64 - shift) : 0;
      bm[k] = (bm[k] << shift) | lower;
    }
    std::uint64_t leftover = 0;
    if (copy_from_user(&leftover, base, sizeof leftover)) return -EFAULT;
    bm[0] |= leftover;  // bitmap_or over one whole word
  }
  return copy_to_user(base, bm.data(), nwords * 8) ? -EFAULT : 0;
}

long Type1::dirty_pages(void* arg) {
  if (!v2_) return -EACCES;
  vfio_iommu_type1_dirty_bitmap dirty{};
  constexpr std::size_t minsz = sizeof dirty;  // offsetofend(flags)
  const std::uint32_t mask = VFIO_IOMMU_DIRTY_PAGES_FLAG_START | VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP |
                             VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP;
  if (copy_from_user(&dirty, uptr(arg), minsz)) return -EFAULT;
  if (dirty.argsz < minsz || (dirty.flags & ~mask)) return -EINVAL;
  if (std::popcount(dirty.flags) != 1) return -EINVAL;  // exactly one operation

  if (dirty.flags & VFIO_IOMMU_DIRTY_PAGES_FLAG_START) {
    if (!dirty_tracking_) {  // a second START keeps the bitmaps
      for (auto& [iova, dma] : dmas_) alloc_bitmap(dma, min_pgsize());
      dirty_tracking_ = true;
    }
    return 0;
  }
  if (dirty.flags & VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP) {
    if (dirty_tracking_) {
      for (auto& [iova, dma] : dmas_) dma.bitmap = {};
      dirty_tracking_ = false;
    }
    return 0;
  }
  vfio_iommu_type1_dirty_bitmap_get range{};
  const std::uint64_t data_size = dirty.argsz - minsz;
  if (data_size < sizeof range) return -EINVAL;
  if (copy_from_user(&range, uptr(arg) + minsz, sizeof range)) return -EFAULT;
  if (range.iova + range.size < range.iova) return -EINVAL;
  if (!access_ok(range.bitmap.data, range.bitmap.size)) return -EINVAL;
  if (range.bitmap.pgsize == 0) return -EINVAL;  // the kernel would take __ffs(0)
  const unsigned pgshift = static_cast<unsigned>(std::countr_zero(range.bitmap.pgsize));
  if (int rc = verify_bitmap_size(range.size >> pgshift, range.bitmap.size)) return rc;
  const std::uint64_t pgsize = min_pgsize();
  if (range.bitmap.pgsize != pgsize) return -EINVAL;  // only the smallest page size
  if (range.iova & (pgsize - 1)) return -EINVAL;
  if (range.size == 0 || (range.size & (pgsize - 1))) return -EINVAL;
  if (!dirty_tracking_) return -EINVAL;

  // The range must not bisect mappings; then every entry inside it reports.
  auto first = find_dma(range.iova, 1);
  if (first != dmas_.end() && first->second.iova != range.iova) return -EINVAL;
  auto last = find_dma(range.iova + range.size - 1, 0);
  if (last != dmas_.end() && last->second.iova + last->second.size != range.iova + range.size) {
    return -EINVAL;
  }
  for (auto it = dmas_.lower_bound(range.iova); it != dmas_.end(); ++it) {
    if (it->second.iova > range.iova + range.size - 1) break;
    Dma& dma = it->second;
    if (int rc = update_user_bitmap(range.bitmap.data, dma, range.iova, pgsize)) return rc;
    // Cleared for the next call (no page is pinned by a vendor driver to set again).
    const std::uint64_t nbits = dma.size / pgsize;
    for (std::uint64_t i = 0; i < nbits / 64; ++i) dma.bitmap[i] = 0;
    if (nbits % 64) dma.bitmap[nbits / 64] &= ~((1ull << (nbits % 64)) - 1);
  }
  return 0;
}

std::shared_ptr<Domain> Type1::domain_for(IommuModel::Kind kind) const {
  for (const DomainSlot& s : domains_) {
    if (s.model.kind == kind) return s.domain;
  }
  return nullptr;
}

}  // namespace fastmap::sim::vfio
