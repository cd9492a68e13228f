// The floor a batch map is measured against: a plain C++ loop of IOMMU_IOAS_MAP (then
// IOMMU_IOAS_UNMAP) ioctls through the seam, with no bookkeeping, no rollback and no Python.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "seam/kernel.h"

namespace fastmap::engine {

// Maps entry i at fixed_iovas[i]; returns 0, or the first -errno (nothing is undone).
long map_loop(Kernel& kernel, int iommufd, std::uint32_t ioas_id,
              std::span<const std::uint64_t> vas, std::span<const std::uint64_t> lengths,
              std::span<const std::uint64_t> fixed_iovas, std::uint32_t prot) noexcept;

// Unmaps entry i; returns 0, or the first -errno.
long unmap_loop(Kernel& kernel, int iommufd, std::uint32_t ioas_id,
                std::span<const std::uint64_t> iovas,
                std::span<const std::uint64_t> lengths) noexcept;

}  // namespace fastmap::engine
