// The ioctl handlers the dispatcher's table points at. Handlers run under the context
// mutex and return 0 or -errno.
#pragma once

#include <cstdint>

#include "sim/iommufd/ucmd.h"

namespace fastmap::sim {

int iommufd_destroy(Ucmd& u);                  // ctx.cc
int iommufd_ioas_alloc(Ucmd& u);               // ioas_ioctls.cc
int iommufd_ioas_allow_iovas(Ucmd& u);         // ioas_ioctls.cc
int iommufd_ioas_copy(Ucmd& u);                // ioas_ioctls.cc
int iommufd_ioas_iova_ranges(Ucmd& u);         // ioas_ioctls.cc
int iommufd_ioas_map(Ucmd& u);                 // ioas_ioctls.cc
int iommufd_ioas_map_file(Ucmd& u);            // ioas_ioctls.cc
int iommufd_ioas_unmap(Ucmd& u);               // ioas_ioctls.cc
int iommufd_option(Ucmd& u);                   // ioas_ioctls.cc
int iommufd_vfio_ioas(Ucmd& u);                // vfio_compat.cc
int iommufd_hwpt_alloc(Ucmd& u);               // hwpt.cc
int iommufd_get_hw_info(Ucmd& u);              // idev.cc
int iommufd_hwpt_set_dirty_tracking(Ucmd& u);  // dirty.cc
int iommufd_hwpt_get_dirty_bitmap(Ucmd& u);    // dirty.cc
int iommufd_test(Ucmd& u);                     // selftest.cc

// The legacy VFIO container ioctls on /dev/iommu (nr < 0x80 or past the table).
long iommufd_vfio_compat_ioctl(IommufdCtx& ctx, unsigned long cmd, std::uint64_t arg);  // vfio_compat.cc

}  // namespace fastmap::sim
