// The legacy VFIO container (/dev/vfio/vfio): groups are added with
// VFIO_GROUP_SET_CONTAINER, VFIO_SET_IOMMU opens the IOMMU backend (Type1 or Type1v2, see
// type1.h) over them, and the backend's ioctls go through the container. The last group
// leaving releases the backend (all mappings go, SET_IOMMU is needed again).
#pragma once

#include <memory>
#include <mutex>
#include <vector>

#include "sim/core/file.h"
#include "sim/iommu/domain.h"
#include "sim/vfio/type1.h"
#include "sim/vfio/vfio_device.h"

namespace fastmap::sim {
class KernelCore;
}

namespace fastmap::sim::vfio {

class Container {
 public:
  explicit Container(KernelCore& kernel) : kernel_(kernel) {}
  Container(const Container&) = delete;
  Container& operator=(const Container&) = delete;

  long ioctl(unsigned long request, void* arg) noexcept;

  // VFIO_GROUP_SET_CONTAINER, with the group's lock held: 0 or -errno.
  int attach_group(VfioGroup& group) noexcept;
  // UNSET_CONTAINER or the group file's release, with the group's lock held.
  void detach_group(VfioGroup& group) noexcept;

  // VFIO_SET_IOMMU has been done (devices of attached groups may be opened).
  bool backend_set() const;

  // Introspection: the domain serving devices behind this kind of IOMMU, or nullptr.
  std::shared_ptr<Domain> domain_for(IommuModel::Kind kind) const;
  std::size_t dma_count() const;

 private:
  long check_extension(unsigned long ext) const;
  long set_iommu(unsigned long type);

  KernelCore& kernel_;
  mutable std::mutex mu_;  // container->group_lock and the backend's iommu->lock in one
  std::vector<VfioGroup*> groups_;
  std::unique_ptr<Type1> iommu_;  // set by VFIO_SET_IOMMU
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
