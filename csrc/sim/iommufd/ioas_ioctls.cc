// IOAS ioctls: ALLOC.
#include <cerrno>
#include <memory>

#include "sim/iommufd/ctx.h"
#include "sim/iommufd/ioas.h"
#include "sim/iommufd/ioctls.h"
#include "uapi/iommufd.h"

namespace fastmap::sim {

int iommufd_ioas_alloc(Ucmd& u) {
  auto& cmd = u.get<uapi::iommu_ioas_alloc>();
  if (cmd.flags) return -EOPNOTSUPP;
  auto ioas = std::make_shared<Ioas>();
  if (!u.ctx.objects.insert(ioas)) return -ENOSPC;
  cmd.out_ioas_id = ioas->id;
  if (int rc = u.respond()) {
    u.ctx.remove_object(ioas);  // the id was never visible: abort the creation
    return rc;
  }
  return 0;
}

}  // namespace fastmap::sim
