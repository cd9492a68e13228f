// VFIO compatibility on /dev/iommu (vfio_compat.c): IOMMU_VFIO_IOAS, which picks the IOAS
// the legacy container ioctls act on, and the container ioctls themselves.
#include <cerrno>

#include "sim/iommufd/ctx.h"
#include "sim/iommufd/ioas.h"
#include "sim/iommufd/ioctls.h"
#include "uapi/iommufd.h"

namespace fastmap::sim {

using namespace fastmap::uapi;

int iommufd_vfio_ioas(Ucmd& u) {
  auto& cmd = u.get<iommu_vfio_ioas>();
  if (cmd.reserved) return -EOPNOTSUPP;
  switch (cmd.op) {
    case IOMMU_VFIO_IOAS_GET:
      if (!u.ctx.vfio_ioas_id || !u.ctx.objects.get<Ioas>(u.ctx.vfio_ioas_id)) return -ENODEV;
      cmd.ioas_id = u.ctx.vfio_ioas_id;
      return u.respond();
    case IOMMU_VFIO_IOAS_SET:
      if (!u.ctx.objects.get<Ioas>(cmd.ioas_id)) return -ENOENT;
      u.ctx.vfio_ioas_id = cmd.ioas_id;
      return 0;
    case IOMMU_VFIO_IOAS_CLEAR:
      u.ctx.vfio_ioas_id = 0;
      return 0;
    default:
      return -EOPNOTSUPP;
  }
}

long iommufd_vfio_compat_ioctl(IommufdCtx& /*ctx*/, unsigned long /*cmd*/, std::uint64_t /*arg*/) {
  return -ENOTTY;
}

}  // namespace fastmap::sim
