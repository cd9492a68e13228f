// IOMMU_HWPT_INVALIDATE. Its targets are nested HWPTs (and from 6.13 vIOMMUs), which the
// simulator does not model, so after the argument checks every id is missing or of the
// wrong type. As in the kernel, the number of entries handled (none) is written back even
// on failure.
#include <cerrno>

#include "sim/iommufd/ctx.h"
#include "sim/iommufd/ioctls.h"
#include "uapi/iommufd.h"

namespace fastmap::sim {

using namespace fastmap::uapi;

int iommufd_hwpt_invalidate(Ucmd& u) {
  auto& cmd = u.get<iommu_hwpt_invalidate>();
  int rc;
  if (cmd.reserved) {
    rc = -EOPNOTSUPP;
  } else if (u.ctx.config.kernel_version < 613) {
    rc = -ENOENT;  // 6.12 looks the id up as a nested HWPT first, and none exist
  } else if (cmd.entry_num && (!cmd.data_uptr || !cmd.entry_len)) {
    rc = -EINVAL;
  } else if (!u.ctx.objects.find(cmd.hwpt_id)) {
    rc = -ENOENT;
  } else {
    rc = -EINVAL;  // a paging HWPT, IOAS or device: not something to invalidate
  }
  cmd.entry_num = 0;
  if (u.respond()) return -EFAULT;
  return rc;
}

}  // namespace fastmap::sim
