// The legacy VFIO container (/dev/vfio/vfio) with the Type1 IOMMU backend
// (vfio_iommu_type1): groups are added with VFIO_GROUP_SET_CONTAINER, VFIO_SET_IOMMU picks
// TYPE1 or TYPE1v2, then MAP_DMA/UNMAP_DMA manage vfio_dma entries that are pinned and
// mapped into one Domain per IOMMU driver in use (groups behind the same kind of IOMMU
// share a domain, as type1 reuses a compatible domain).
//
// Type1 has no hardware dirty tracking: with any IOMMU-backed group attached, every
// mapped page is reported dirty (VFIO_IOMMU_DIRTY_PAGES GET_BITMAP and UNMAP_DMA
// GET_DIRTY_BITMAP).
//
// Not modelled: VFIO_UPDATE_VADDR / the VADDR flags (CHECK_EXTENSION says 0, the flags are
// refused with EINVAL), mdev (emulated IOMMU) groups, nesting. Pinned pages are charged
// to the process's mm locked_vm (shared with iommufd's per-mm accounting mode) unless the
// caller has CAP_IPC_LOCK.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "sim/config.h"
#include "sim/file.h"
#include "sim/iommu/domain.h"
#include "sim/vfio/vfio_device.h"

namespace fastmap::sim {
class SimKernel;
}

namespace fastmap::sim::vfio {

class Container {
 public:
  explicit Container(SimKernel& kernel);
  ~Container();
  Container(const Container&) = delete;
  Container& operator=(const Container&) = delete;

  long ioctl(unsigned long request, void* arg) noexcept;

  // VFIO_GROUP_SET_CONTAINER, with the group's lock held: 0 or -errno.
  int attach_group(VfioGroup& group) noexcept;
  // UNSET_CONTAINER or the group file's release, with the group's lock held. The last
  // group leaving releases the IOMMU backend (all mappings go, SET_IOMMU is needed again).
  void detach_group(VfioGroup& group) noexcept;

  // VFIO_SET_IOMMU has been done (devices of attached groups may be opened).
  bool backend_set() const;

  // Introspection: the domain serving devices behind this kind of IOMMU, or nullptr.
  std::shared_ptr<Domain> domain_for(IommuModel::Kind kind) const;
  std::size_t dma_count() const;

 private:
  struct Dma {
    std::uint64_t iova;
    std::uint64_t size;
    std::uint64_t vaddr;
    int prot;
    bool iommu_mapped;  // pinned and in every domain
  };
  struct DomainSlot {
    IommuModel model;
    std::shared_ptr<Domain> domain;
    std::vector<VfioGroup*> groups;
  };

  long check_extension(unsigned long ext) const;
  long set_iommu(unsigned long type);
  long get_info(void* arg);
  long map_dma(void* arg);
  long unmap_dma(void* arg);
  long dirty_pages(void* arg);

  int attach_to_domain(VfioGroup& group);
  void detach_from_domain(VfioGroup& group);
  void release_backend();
  void recompute_geometry();
  int pin_and_map(Dma& dma, const std::vector<Domain*>& domains, bool account);
  bool charge(std::uint64_t npages);
  void uncharge(std::uint64_t npages);
  void unmap_and_unpin(const Dma& dma);
  std::map<std::uint64_t, Dma>::iterator find_dma(std::uint64_t start, std::uint64_t size);
  bool iova_valid(std::uint64_t first, std::uint64_t last) const;
  int update_user_bitmap(std::uint64_t user_bitmap, const Dma& dma, std::uint64_t base_iova,
                         std::uint64_t pgsize) const;
  std::uint64_t min_pgsize() const;

  SimKernel& kernel_;
  const SimConfig config_;
  mutable std::mutex mu_;  // container->group_lock and iommu->lock in one
  std::vector<VfioGroup*> groups_;
  bool backend_ = false;  // SET_IOMMU done
  bool v2_ = false;
  std::map<std::uint64_t, Dma> dmas_;
  std::vector<DomainSlot> domains_;
  std::uint32_t dma_avail_;
  std::uint64_t pgsize_bitmap_;
  std::vector<IovaRange> iova_list_;  // empty until the first domain
  bool dirty_tracking_ = false;
  std::uint64_t locked_pages_ = 0;  // what this container charged to locked_vm
};

// An open /dev/vfio/vfio.
class ContainerFile final : public File {
 public:
  explicit ContainerFile(std::shared_ptr<Container> c) : c_(std::move(c)) {}
  long ioctl(unsigned long request, void* arg) noexcept override { return c_->ioctl(request, arg); }
  const std::shared_ptr<Container>& container() const noexcept { return c_; }
  // /dev/vfio/vfio is the misc device VFIO_MINOR.
  bool chardev(unsigned* major, unsigned* minor) const noexcept override {
    *major = 10;
    *minor = 196;  // VFIO_MINOR
    return true;
  }

 private:
  std::shared_ptr<Container> c_;
};

}  // namespace fastmap::sim::vfio
