#include "sim/vfio/container.h"

#include <algorithm>
#include <cerrno>
#include <new>

#include "uapi/vfio.h"

namespace fastmap::sim::vfio {

using namespace fastmap::uapi;

long Container::ioctl(unsigned long request, void* arg) noexcept {
  try {
    switch (request) {
      case VFIO_GET_API_VERSION:
        return VFIO_API_VERSION;
      case VFIO_CHECK_EXTENSION: {
        std::lock_guard<std::mutex> g(mu_);
        return check_extension(reinterpret_cast<unsigned long>(arg));
      }
      case VFIO_SET_IOMMU: {
        std::lock_guard<std::mutex> g(mu_);
        return set_iommu(reinterpret_cast<unsigned long>(arg));
      }
      default:
        break;
    }
    std::lock_guard<std::mutex> g(mu_);
    if (!iommu_) return -EINVAL;  // vfio_fops_unl_ioctl's answer without a backend
    return iommu_->ioctl(request, arg);
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
}

long Container::check_extension(unsigned long ext) const {
  // Without a backend, vfio polls the registered backends: Type1 answers with no state.
  return iommu_ ? iommu_->check_extension(ext) : Type1::check_extension_unset(ext);
}

long Container::set_iommu(unsigned long type) {
  // Only a container with a group may enable an IOMMU, and only once.
  if (groups_.empty() || iommu_) return -EINVAL;
  if (check_extension(type) <= 0) return -ENODEV;  // no backend claims this type
  if (type != VFIO_TYPE1_IOMMU && type != VFIO_TYPE1v2_IOMMU) return -EINVAL;  // type1 open()
  auto iommu = std::make_unique<Type1>(kernel_, type == VFIO_TYPE1v2_IOMMU);
  for (VfioGroup* group : groups_) {
    // On failure the half-attached backend goes, detaching what it attached.
    if (int rc = iommu->attach_group(*group)) return rc;
  }
  iommu_ = std::move(iommu);
  return 0;
}

int Container::attach_group(VfioGroup& group) noexcept {
  std::lock_guard<std::mutex> g(mu_);
  try {
    if (iommu_) {
      if (int rc = iommu_->attach_group(group)) return rc;
    }
    groups_.push_back(&group);
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
  return 0;
}

void Container::detach_group(VfioGroup& group) noexcept {
  std::lock_guard<std::mutex> g(mu_);
  if (iommu_) iommu_->detach_group(group);
  groups_.erase(std::remove(groups_.begin(), groups_.end(), &group), groups_.end());
  if (groups_.empty()) iommu_.reset();
}

std::shared_ptr<Domain> Container::domain_for(IommuModel::Kind kind) const {
  std::lock_guard<std::mutex> g(mu_);
  return iommu_ ? iommu_->domain_for(kind) : nullptr;
}

bool Container::backend_set() const {
  std::lock_guard<std::mutex> g(mu_);
  return iommu_ != nullptr;
}

std::size_t Container::dma_count() const {
  std::lock_guard<std::mutex> g(mu_);
  return iommu_ ? iommu_->dma_count() : 0;
}

}  // namespace fastmap::sim::vfio
