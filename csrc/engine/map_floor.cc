#include "engine/map_floor.h"

#include "uapi/iommufd.h"

namespace fastmap::engine {

long map_loop(Kernel& kernel, int iommufd, std::uint32_t ioas_id,
              std::span<const std::uint64_t> vas, std::span<const std::uint64_t> lengths,
              std::span<const std::uint64_t> fixed_iovas, std::uint32_t prot) noexcept {
  uapi::iommu_ioas_map cmd{};
  for (std::size_t i = 0; i < vas.size(); ++i) {
    cmd.size = sizeof cmd;
    cmd.flags = prot | uapi::IOMMU_IOAS_MAP_FIXED_IOVA;
    cmd.ioas_id = ioas_id;
    cmd.user_va = vas[i];
    cmd.length = lengths[i];
    cmd.iova = fixed_iovas[i];
    if (long rc = kernel.ioctl(iommufd, uapi::IOMMU_IOAS_MAP, &cmd); rc < 0) return rc;
  }
  return 0;
}

long unmap_loop(Kernel& kernel, int iommufd, std::uint32_t ioas_id,
                std::span<const std::uint64_t> iovas,
                std::span<const std::uint64_t> lengths) noexcept {
  uapi::iommu_ioas_unmap cmd{};
  for (std::size_t i = 0; i < iovas.size(); ++i) {
    cmd.size = sizeof cmd;
    cmd.ioas_id = ioas_id;
    cmd.iova = iovas[i];
    cmd.length = lengths[i];
    if (long rc = kernel.ioctl(iommufd, uapi::IOMMU_IOAS_UNMAP, &cmd); rc < 0) return rc;
  }
  return 0;
}

}  // namespace fastmap::engine
