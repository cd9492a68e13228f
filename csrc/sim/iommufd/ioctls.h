// The ioctl handlers the dispatcher's table points at. Handlers run under the context
// mutex and return 0 or -errno.
#pragma once

#include <cstdint>

#include "sim/iommufd/objects.h"
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
int iommufd_hwpt_invalidate(Ucmd& u);         // nesting.cc
int iommufd_fault_alloc(Ucmd& u);              // fault.cc
int iommufd_test(Ucmd& u);                     // selftest.cc

// Whether an object is a fault queue (HWPT_ALLOC's fault_id).
bool is_fault_object(const Object& obj);       // fault.cc

// iopt_alloc_user_pages' argument checks, shared by IOAS_MAP and compat MAP_DMA: 0 or
// -EINVAL / -EOVERFLOW in the modelled kernel version's order.
int check_user_pages_args(const IommufdCtx& ctx, std::uint64_t uptr, std::uint64_t length);  // ioas_ioctls.cc

// The legacy VFIO container ioctls on /dev/iommu (nr < 0x80 or past the table).
long iommufd_vfio_compat_ioctl(IommufdCtx& ctx, unsigned long cmd, std::uint64_t arg);  // vfio_compat.cc

}  // namespace fastmap::sim
