// A paging HWPT object: one IOMMU domain kept filled with its IOAS's mappings.
//
// A user HWPT (IOMMU_HWPT_ALLOC) lives until IOMMU_DESTROY; an auto HWPT (created when a
// device attaches to an IOAS id) dies with its last device. Either holds a user on the
// IOAS; each attached device holds a user on the HWPT.
#pragma once

#include <cstdint>
#include <memory>

#include "sim/iommu/domain.h"
#include "sim/iommufd/ioas.h"
#include "sim/iommufd/objects.h"

namespace fastmap::sim {

class Idev;

class Hwpt final : public Object {
 public:
  static constexpr ObjType kType = ObjType::kHwpt;
  Hwpt() : Object(kType) {}

  // iommufd_hwpt_paging_destroy: leave the IOAS (unmapping the domain), drop the IOAS user.
  void destroy(IommufdCtx& ctx) override;

  std::shared_ptr<Ioas> ioas;
  std::shared_ptr<Domain> domain;
  std::shared_ptr<Object> fault;  // the fault queue (FAULT_ID_VALID), which it holds a user on
  bool auto_domain = false;
  bool nest_parent = false;
  bool in_ioas = false;  // domain added to ioas->iopt and listed in ioas->hwpts
};

// iommufd_hwpt_paging_alloc: a new HWPT on `ioas` with a domain for idev's IOMMU, in the
// object table and filled. With `immediate_attach` idev is attached before the domain is
// filled (the auto-domain attach path). 0 or -errno; nothing is left behind on failure.
int hwpt_paging_alloc(IommufdCtx& ctx, const std::shared_ptr<Ioas>& ioas, Idev& idev,
                      std::uint32_t flags, bool immediate_attach, std::shared_ptr<Hwpt>* out);

// Whether a device behind `dev` can use `domain` (what iommu_attach_group's driver callback
// decides): same IOMMU kind and aperture, and a dirty-tracking domain needs a device whose
// IOMMU tracks dirty bits.
bool domain_compatible(const Domain& domain, const IommuModel& dev);

}  // namespace fastmap::sim
