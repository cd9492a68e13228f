// The Type1 IOMMU backend of a legacy VFIO container (vfio_iommu_type1): MAP_DMA/UNMAP_DMA
// manage vfio_dma entries that are pinned and mapped into one Domain per IOMMU driver in
// use (groups behind the same kind of IOMMU share a domain, as type1 reuses a compatible
// domain).
//
// Type1 has no hardware dirty tracking: with any IOMMU-backed group attached, every
// mapped page is reported dirty (VFIO_IOMMU_DIRTY_PAGES GET_BITMAP and UNMAP_DMA
// GET_DIRTY_BITMAP).
//
// Not modelled: VFIO_UPDATE_VADDR / the VADDR flags (CHECK_EXTENSION says 0, the flags are
// refused with EINVAL), mdev (emulated IOMMU) groups, nesting. Pinned pages are charged
// to the process's mm locked_vm (shared with iommufd's per-mm accounting mode) unless the
// caller has CAP_IPC_LOCK.
//
// Locking: every method runs with the owning Container's lock held (the kernel's
// container->group_lock and iommu->lock in one).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "sim/core/config.h"
#include "sim/core/page_hold.h"
#include "sim/iommu/domain.h"
#include "sim/vfio/vfio_device.h"

namespace fastmap::sim {
class KernelCore;
}

namespace fastmap::sim::vfio {

class Type1 {
 public:
  // The backend VFIO_SET_IOMMU opens, TYPE1v2 when `v2`; no group attached yet.
  Type1(KernelCore& kernel, bool v2);
  // vfio_iommu_type1_release: unpins and unmaps everything, detaches every device.
  ~Type1();
  Type1(const Type1&) = delete;
  Type1& operator=(const Type1&) = delete;

  // What the registered backend answers with no container state (the container asks it
  // before SET_IOMMU).
  static long check_extension_unset(unsigned long ext);
  long check_extension(unsigned long ext) const;
  // GET_INFO, MAP_DMA, UNMAP_DMA, DIRTY_PAGES; -ENOTTY for anything else.
  long ioctl(unsigned long request, void* arg);

  // A group joins (attach_group: 0 or -errno, nothing changed on failure) or leaves.
  int attach_group(VfioGroup& group);
  void detach_group(VfioGroup& group);

  std::shared_ptr<Domain> domain_for(IommuModel::Kind kind) const;
  std::size_t dma_count() const noexcept { return dmas_.size(); }

 private:
  struct Dma {
    std::uint64_t iova;
    std::uint64_t size;
    std::uint64_t vaddr;
    int prot;
    bool iommu_mapped;  // pinned and in every domain
    PageHold hold;      // the pinned pages while iommu_mapped (what the domains map)
    // dma->bitmap while dirty tracking is on: one bit per smallest page plus one spare
    // word, kept between GET_BITMAP calls (see update_user_bitmap).
    std::vector<std::uint64_t> bitmap;
  };
  struct DomainSlot {
    IommuModel model;
    std::shared_ptr<Domain> domain;
    std::vector<VfioGroup*> groups;
  };

  long get_info(void* arg);
  long map_dma(void* arg);
  long unmap_dma(void* arg);
  long dirty_pages(void* arg);

  void recompute_geometry();
  int pin_and_map(Dma& dma, const std::vector<Domain*>& domains, bool account);
  bool charge(std::uint64_t npages);
  void uncharge(std::uint64_t npages);
  void unmap_and_unpin(const Dma& dma);
  std::map<std::uint64_t, Dma>::iterator find_dma(std::uint64_t start, std::uint64_t size);
  bool iova_valid(std::uint64_t first, std::uint64_t last) const;
  int update_user_bitmap(std::uint64_t user_bitmap, Dma& dma, std::uint64_t base_iova,
                         std::uint64_t pgsize);
  static void alloc_bitmap(Dma& dma, std::uint64_t pgsize);
  std::uint64_t min_pgsize() const;

  KernelCore& kernel_;
  const SimConfig config_;
  const bool v2_;
  std::map<std::uint64_t, Dma> dmas_;
  std::vector<DomainSlot> domains_;
  std::uint32_t dma_avail_;
  std::uint64_t pgsize_bitmap_;
  std::vector<IovaRange> iova_list_;  // empty until the first domain
  bool dirty_tracking_ = false;
  std::uint64_t locked_pages_ = 0;  // what this backend charged to locked_vm
};

}  // namespace fastmap::sim::vfio
