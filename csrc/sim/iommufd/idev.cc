// Device objects: bind, attach (auto domains and replace), detach, unbind, GET_HW_INFO,
// and the device_api.h entry points the VFIO side calls.
#include "sim/iommufd/idev.h"

#include <algorithm>
#include <cerrno>
#include <mutex>

#include "sim/iommufd/ctx.h"
#include "sim/iommufd/device_api.h"
#include "sim/iommufd/ioctls.h"
#include "sim/core/user_memory.h"
#include "uapi/iommufd.h"

namespace fastmap::sim {

using namespace fastmap::uapi;

namespace {

int reserve_device_regions(IoPagetable& iopt, const Device& dev) {
  for (const auto& r : dev.iommu().reserved) {
    if (int rc = iopt.reserve(r.start, r.last, &dev)) {
      iopt.remove_reserved(&dev);
      return rc;
    }
  }
  return 0;
}

// iommufd_device_do_replace: move an attached device to `hwpt`.
int hwpt_replace(IommufdCtx& ctx, const std::shared_ptr<Hwpt>& hwpt, Idev& idev) {
  if (!idev.hwpt) return -EINVAL;
  if (idev.hwpt == hwpt) return 0;
  std::shared_ptr<Hwpt> old = idev.hwpt;
  const bool other_ioas = old->ioas != hwpt->ioas;
  if (other_ioas) {
    if (int rc = reserve_device_regions(hwpt->ioas->iopt, *idev.dev)) return rc;
  }
  if (!domain_compatible(*hwpt->domain, idev.dev->iommu())) {
    if (other_ioas) hwpt->ioas->iopt.remove_reserved(idev.dev.get());
    return -EINVAL;
  }
  if (other_ioas) old->ioas->iopt.remove_reserved(idev.dev.get());
  idev.hwpt = hwpt;
  ++hwpt->users;
  idev.dev->set_domain(hwpt->domain);
  --old->users;
  hwpt_put(ctx, old);
  return 0;
}

int attach_or_replace(IommufdCtx& ctx, const std::shared_ptr<Hwpt>& hwpt, Idev& idev,
                      bool replace) {
  return replace ? hwpt_replace(ctx, hwpt, idev) : hwpt_attach(ctx, hwpt, idev);
}

// iommufd_device_auto_get_domain: reuse a compatible auto HWPT of the IOAS, else make one.
int auto_get_domain(IommufdCtx& ctx, const std::shared_ptr<Ioas>& ioas, Idev& idev,
                    std::uint32_t* pt_id, bool replace) {
  const std::vector<Hwpt*> candidates = ioas->hwpts;
  for (Hwpt* h : candidates) {
    if (!h->auto_domain) continue;
    auto hwpt = ctx.objects.get<Hwpt>(h->id);
    if (!hwpt) continue;
    int rc = attach_or_replace(ctx, hwpt, idev, replace);
    if (rc == -EINVAL) continue;  // incompatible: try the next one
    if (rc) return rc;
    *pt_id = hwpt->id;
    return 0;
  }
  std::shared_ptr<Hwpt> hwpt;
  if (int rc = hwpt_paging_alloc(ctx, ioas, idev, 0, !replace, &hwpt)) return rc;
  if (replace) {
    if (int rc = hwpt_replace(ctx, hwpt, idev)) {
      ctx.remove_object(hwpt);
      return rc;
    }
  }
  hwpt->auto_domain = true;
  *pt_id = hwpt->id;
  return 0;
}

std::shared_ptr<Idev> find_idev(IommufdCtx& ctx, std::uint32_t devid) {
  return ctx.objects.get<Idev>(devid);
}

}  // namespace

int hwpt_attach(IommufdCtx& /*ctx*/, const std::shared_ptr<Hwpt>& hwpt, Idev& idev) {
  if (idev.hwpt && idev.hwpt != hwpt) return -EINVAL;
  IoPagetable& iopt = hwpt->ioas->iopt;
  if (int rc = reserve_device_regions(iopt, *idev.dev)) return rc;
  if (!domain_compatible(*hwpt->domain, idev.dev->iommu())) {
    iopt.remove_reserved(idev.dev.get());
    return -EINVAL;
  }
  idev.hwpt = hwpt;
  ++hwpt->users;
  idev.dev->set_domain(hwpt->domain);
  return 0;
}

void hwpt_unattach(IommufdCtx& /*ctx*/, Idev& idev) {
  std::shared_ptr<Hwpt> hwpt = std::move(idev.hwpt);
  if (!hwpt) return;
  idev.dev->set_domain(nullptr);  // DMA is blocked from here on
  hwpt->ioas->iopt.remove_reserved(idev.dev.get());
  --hwpt->users;
}

void hwpt_put(IommufdCtx& ctx, const std::shared_ptr<Hwpt>& hwpt) {
  if (hwpt->auto_domain && hwpt->users == 0) ctx.remove_object(hwpt);
}

int idev_bind(IommufdCtx& ctx, std::shared_ptr<Device> dev, std::uint32_t* out_id) {
  auto idev = std::make_shared<Idev>(std::move(dev));
  if (int rc = ctx.objects.add(idev)) return rc;
  idev->users = 1;  // the binding, until unbind
  *out_id = idev->id;
  return 0;
}

int idev_attach(IommufdCtx& ctx, Idev& idev, std::uint32_t* pt_id) {
  const bool replace = idev.hwpt != nullptr;
  auto pt = ctx.objects.find(*pt_id);
  if (!pt) return -ENOENT;
  int rc;
  if (pt->type == ObjType::kHwpt) {
    rc = attach_or_replace(ctx, std::static_pointer_cast<Hwpt>(pt), idev, replace);
  } else if (pt->type == ObjType::kIoas) {
    rc = auto_get_domain(ctx, std::static_pointer_cast<Ioas>(pt), idev, pt_id, replace);
  } else {
    rc = -EINVAL;
  }
  if (rc == 0 && !replace) ++idev.users;  // the attachment, until detach
  return rc;
}

void idev_detach(IommufdCtx& ctx, Idev& idev) {
  std::shared_ptr<Hwpt> hwpt = idev.hwpt;
  if (!hwpt) return;
  hwpt_unattach(ctx, idev);
  hwpt_put(ctx, hwpt);
  --idev.users;
}

void idev_unbind(IommufdCtx& ctx, Idev& idev) {
  idev_detach(ctx, idev);
  --idev.users;
  auto self = ctx.objects.get<Idev>(idev.id);
  if (self.get() == &idev) ctx.remove_object(self);
}

// ---- IOMMU_GET_HW_INFO --------------------------------------------------------------------

int iommufd_get_hw_info(Ucmd& u) {
  auto& cmd = u.get<iommu_hw_info>();
  // out_max_pasid_log2 is an output (6.12.y stable has it); only the three bytes after it
  // are reserved.
  if (cmd.flags || cmd.reserved[0] || cmd.reserved[1] || cmd.reserved[2]) return -EOPNOTSUPP;
  auto idev = find_idev(u.ctx, cmd.dev_id);
  if (!idev) return -ENOENT;
  const IommuModel& m = idev->dev->iommu();
  const std::uint32_t len = static_cast<std::uint32_t>(m.hw_info.size());
  const std::uint32_t copy_len = std::min(cmd.data_len, len);
  if (copy_to_user(cmd.data_uptr, m.hw_info.data(), copy_len)) return -EFAULT;
  // Zero the rest of a larger user buffer.
  if (copy_len < cmd.data_len && clear_user(cmd.data_uptr + copy_len, cmd.data_len - copy_len)) {
    return -EFAULT;
  }
  cmd.data_len = len;
  cmd.out_data_type = len ? m.hw_info_type : IOMMU_HW_INFO_TYPE_NONE;
  cmd.out_capabilities = m.dirty_tracking ? IOMMU_HW_CAP_DIRTY_TRACKING : 0;
  cmd.out_max_pasid_log2 = 0;  // no simulated device does PASID
  return u.respond();
}

// ---- device_api.h ---------------------------------------------------------------------------

int iommufd_device_bind(IommufdCtx& ctx, std::shared_ptr<Device> device, std::uint32_t* out_devid) {
  std::lock_guard<std::mutex> g(ctx.mu);
  try {
    return idev_bind(ctx, std::move(device), out_devid);
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
}

int iommufd_device_attach(IommufdCtx& ctx, std::uint32_t devid, std::uint32_t* pt_id) {
  std::lock_guard<std::mutex> g(ctx.mu);
  auto idev = find_idev(ctx, devid);
  if (!idev) return -ENOENT;
  try {
    return idev_attach(ctx, *idev, pt_id);
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
}

void iommufd_device_detach(IommufdCtx& ctx, std::uint32_t devid) {
  std::lock_guard<std::mutex> g(ctx.mu);
  if (auto idev = find_idev(ctx, devid)) idev_detach(ctx, *idev);
}

void iommufd_device_unbind(IommufdCtx& ctx, std::uint32_t devid) {
  std::lock_guard<std::mutex> g(ctx.mu);
  if (auto idev = find_idev(ctx, devid)) idev_unbind(ctx, *idev);
}

}  // namespace fastmap::sim
