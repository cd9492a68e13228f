// IOMMU models by name, as fastmap's Python API and tools spell them.
#pragma once

#include <string>

#include "sim/iommu/iommu_model.h"

namespace fastmap::sim {

// "vtd", "mock" or "virtio".
const char* kind_name(IommuModel::Kind k) noexcept;

// The model named "vtd" or "mock"; -EINVAL for any other name.
int model_named(const std::string& name, bool dirty_tracking, IommuModel* out);

}  // namespace fastmap::sim
