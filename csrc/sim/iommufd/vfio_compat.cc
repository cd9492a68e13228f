// The VFIO type1 container ioctls on /dev/iommu (vfio_compat.c).
#include <cerrno>

#include "sim/iommufd/ctx.h"
#include "sim/iommufd/ioctls.h"

namespace fastmap::sim {

long iommufd_vfio_compat_ioctl(IommufdCtx& /*ctx*/, unsigned long /*cmd*/, std::uint64_t /*arg*/) {
  return -ENOTTY;
}

}  // namespace fastmap::sim
