// A device object (iommufd_device): a sim::Device bound to a context, by VFIO's
// BIND_IOMMUFD or by the selftest's MOCK_DOMAIN. Each device is its own IOMMU group.
//
// The binding holds one user (so DESTROY on a device id answers EBUSY); an attachment
// holds another. The functions below run with the context mutex held; device_api.h's
// wrappers take it.
#pragma once

#include <cstdint>
#include <memory>

#include "sim/iommu/device.h"
#include "sim/iommufd/hwpt.h"
#include "sim/iommufd/objects.h"

namespace fastmap::sim {

class Idev final : public Object {
 public:
  static constexpr ObjType kType = ObjType::kDevice;
  explicit Idev(std::shared_ptr<Device> d) : Object(kType), dev(std::move(d)) {}

  std::shared_ptr<Device> dev;
  std::shared_ptr<Hwpt> hwpt;  // the HWPT attached (igroup->hwpt), or null
};

int idev_bind(IommufdCtx& ctx, std::shared_ptr<Device> dev, std::uint32_t* out_id);
// Attach, or replace when attached. *pt_id: an IOAS (auto domain) or HWPT id in, the HWPT
// id out.
int idev_attach(IommufdCtx& ctx, Idev& idev, std::uint32_t* pt_id);
void idev_detach(IommufdCtx& ctx, Idev& idev);
void idev_unbind(IommufdCtx& ctx, Idev& idev);

// iommufd_hw_pagetable_attach for an unattached device: reserve the device's regions in
// the HWPT's IOAS, then attach (-EINVAL when the domain does not suit the device).
int hwpt_attach(IommufdCtx& ctx, const std::shared_ptr<Hwpt>& hwpt, Idev& idev);
// Undo hwpt_attach: drop the device's reservations and its user on the HWPT.
void hwpt_unattach(IommufdCtx& ctx, Idev& idev);
// iommufd_hw_pagetable_put after an unattach or replace: an auto HWPT left without devices
// is destroyed.
void hwpt_put(IommufdCtx& ctx, const std::shared_ptr<Hwpt>& hwpt);

}  // namespace fastmap::sim
