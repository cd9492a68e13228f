// The boundary between the VFIO side and the iommufd side of the simulator: what the kernel's
// vfio_iommufd_physical_* callbacks call in iommufd (iommufd_device_bind/attach/detach/unbind),
// and how /dev/iommu is opened. Implemented in sim/iommufd/.
#pragma once

#include <cstdint>
#include <memory>

#include "sim/iommu/device.h"
#include "sim/core/file.h"

namespace fastmap::sim {

class KernelCore;
class IommufdCtx;

// /dev/iommu is misc major 10 with a dynamic minor; the simulator shows this one.
inline constexpr unsigned kIommufdMinor = 123;

// open("/dev/iommu"): a new iommufd context.
std::shared_ptr<File> iommufd_open(KernelCore& kernel);

// The iommufd context behind a file, or nullptr when the file is not an iommufd (the caller
// answers EBADFD, as vfio's bind does).
std::shared_ptr<IommufdCtx> iommufd_ctx_from_file(const std::shared_ptr<File>& file);

// Bind a device to the context: a device object in the shared id namespace. 0 or -errno.
int iommufd_device_bind(IommufdCtx& ctx, std::shared_ptr<Device> device, std::uint32_t* out_devid);
// Attach (or, when attached, replace) to an IOAS (auto domain) or HWPT id. *pt_id is
// updated to the HWPT attached. 0 or -errno.
int iommufd_device_attach(IommufdCtx& ctx, std::uint32_t devid, std::uint32_t* pt_id);
// Detach; a no-op when not attached.
void iommufd_device_detach(IommufdCtx& ctx, std::uint32_t devid);
// Unbind (on close of the device fd): detaches first, then destroys the device object.
void iommufd_device_unbind(IommufdCtx& ctx, std::uint32_t devid);

}  // namespace fastmap::sim
