// The ioctl handlers the dispatcher's table points at, one per command; each file that
// implements a group of them says so at its top. Handlers run under the context mutex and
// return 0 or -errno.
#pragma once

#include <cstdint>

#include "sim/iommufd/ucmd.h"

namespace fastmap::sim {

int iommufd_destroy(Ucmd& u);             // ctx.cc
int iommufd_ioas_alloc(Ucmd& u);          // ioas_ioctls.cc

// The legacy VFIO container ioctls on /dev/iommu (nr < 0x80 or past the table).
long iommufd_vfio_compat_ioctl(IommufdCtx& ctx, unsigned long cmd, std::uint64_t arg);  // vfio_compat.cc

}  // namespace fastmap::sim
