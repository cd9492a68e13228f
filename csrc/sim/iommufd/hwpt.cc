// HWPT objects and IOMMU_HWPT_ALLOC.
#include "sim/iommufd/hwpt.h"

#include <algorithm>
#include <cerrno>

#include "sim/iommufd/ctx.h"
#include "sim/iommufd/idev.h"
#include "sim/iommufd/ioctls.h"
#include "uapi/iommufd.h"

namespace fastmap::sim {

using namespace fastmap::uapi;

void Hwpt::destroy(IommufdCtx& /*ctx*/) {
  if (in_ioas) {
    std::erase(ioas->hwpts, this);
    ioas->iopt.remove_domain(domain.get());
    in_ioas = false;
  }
  if (fault) --fault->users;
  --ioas->users;
}

bool domain_compatible(const Domain& domain, const IommuModel& dev) {
  const IommuModel& m = domain.model();
  if (m.kind != dev.kind || m.aperture_start != dev.aperture_start ||
      m.aperture_last != dev.aperture_last) {
    return false;
  }
  return !domain.dirty_capable() || dev.dirty_tracking;
}

namespace {

// The flag checks iommufd_hwpt_paging_alloc does before allocating anything. Until 6.13
// a fault queue could only be attached to a nested HWPT, so 6.12 refuses FAULT_ID_VALID
// for a paging one.
int check_paging_flags(const IommufdCtx& ctx, const Idev& idev, std::uint32_t flags) {
  std::uint32_t valid = IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_ALLOC_DIRTY_TRACKING;
  if (ctx.config.kernel_version >= 613) valid |= IOMMU_HWPT_FAULT_ID_VALID;
  if (flags & ~valid) return -EOPNOTSUPP;
  if ((flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING) && !idev.dev->iommu().dirty_tracking) {
    return -EOPNOTSUPP;
  }
  return 0;
}

}  // namespace

int hwpt_paging_alloc(IommufdCtx& ctx, const std::shared_ptr<Ioas>& ioas, Idev& idev,
                      std::uint32_t flags, bool immediate_attach, std::shared_ptr<Hwpt>* out) {
  if (int rc = check_paging_flags(ctx, idev, flags)) return rc;
  auto hwpt = std::make_shared<Hwpt>();
  if (int rc = ctx.objects.add(hwpt)) return rc;
  hwpt->ioas = ioas;
  ++ioas->users;
  hwpt->nest_parent = flags & IOMMU_HWPT_ALLOC_NEST_PARENT;
  hwpt->domain =
      std::make_shared<Domain>(idev.dev->iommu(), (flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING) != 0);
  if (immediate_attach) {
    if (int rc = hwpt_attach(ctx, hwpt, idev)) {
      ctx.remove_object(hwpt);
      return rc;
    }
  }
  if (int rc = ioas->iopt.add_domain(hwpt->domain)) {
    if (immediate_attach) hwpt_unattach(ctx, idev);
    ctx.remove_object(hwpt);
    return rc;
  }
  hwpt->in_ioas = true;
  ioas->hwpts.push_back(hwpt.get());
  *out = std::move(hwpt);
  return 0;
}

int iommufd_hwpt_alloc(Ucmd& u) {
  auto& cmd = u.get<iommu_hwpt_alloc>();
  IommufdCtx& ctx = u.ctx;
  if (cmd.reserved) return -EOPNOTSUPP;
  if ((cmd.data_type == IOMMU_HWPT_DATA_NONE && cmd.data_len) ||
      (cmd.data_type != IOMMU_HWPT_DATA_NONE && !cmd.data_len)) {
    return -EINVAL;
  }
  auto idev = ctx.objects.get<Idev>(cmd.dev_id);
  if (!idev) return -ENOENT;
  auto pt = ctx.objects.find(cmd.pt_id);
  if (!pt) return -EINVAL;  // HWPT_ALLOC's pt_id alone answers EINVAL for a bad id

  std::shared_ptr<Hwpt> hwpt;
  if (pt->type == ObjType::kIoas) {
    if (cmd.data_len) {
      // Driver data for a paging domain: neither VT-d nor the mock takes any.
      if (int rc = check_paging_flags(ctx, *idev, cmd.flags)) return rc;
      return -EOPNOTSUPP;
    }
    auto ioas = std::static_pointer_cast<Ioas>(pt);
    if (int rc = hwpt_paging_alloc(ctx, ioas, *idev, cmd.flags, false, &hwpt)) return rc;
  } else if (pt->type == ObjType::kHwpt) {
    // A nested (stage-1) HWPT on a parent. Nesting is not modelled: after the kernel's
    // argument checks the driver declines.
    auto parent = std::static_pointer_cast<Hwpt>(pt);
    if ((cmd.flags & ~IOMMU_HWPT_FAULT_ID_VALID) || !cmd.data_len) return -EOPNOTSUPP;
    if (parent->auto_domain || !parent->nest_parent) return -EINVAL;
    return -EOPNOTSUPP;
  } else {
    return -EINVAL;
  }

  if (cmd.flags & IOMMU_HWPT_FAULT_ID_VALID) {
    auto fault = ctx.objects.find(cmd.fault_id);
    if (!fault || !is_fault_object(*fault)) {
      ctx.remove_object(hwpt);
      return -ENOENT;
    }
    hwpt->fault = fault;
    ++fault->users;
  }
  cmd.out_hwpt_id = hwpt->id;
  if (int rc = u.respond()) {
    ctx.remove_object(hwpt);
    return rc;
  }
  return 0;
}

}  // namespace fastmap::sim
