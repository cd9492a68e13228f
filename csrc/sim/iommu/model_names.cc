#include "sim/iommu/model_names.h"

#include <cerrno>

namespace fastmap::sim {

const char* kind_name(IommuModel::Kind k) noexcept {
  switch (k) {
    case IommuModel::Kind::kVtd: return "vtd";
    case IommuModel::Kind::kMock: return "mock";
    case IommuModel::Kind::kVirtio: return "virtio";
  }
  return "?";
}

int model_named(const std::string& name, bool dirty_tracking, IommuModel* out) {
  if (name == "vtd") {
    *out = IommuModel::vtd(dirty_tracking);
  } else if (name == "mock") {
    *out = IommuModel::mock(dirty_tracking);
  } else {
    return -EINVAL;
  }
  return 0;
}

}  // namespace fastmap::sim
