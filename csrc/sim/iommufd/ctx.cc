#include "sim/iommufd/ctx.h"

#include <cerrno>
#include <vector>

#include "sim/iommufd/ioctls.h"
#include "sim/core/kernel_core.h"
#include "uapi/iommufd.h"

namespace fastmap::sim {

IommufdCtx::IommufdCtx(KernelCore& k) : kernel(k), config(k.config()) {}

IommufdCtx::~IommufdCtx() {
  // Like iommufd_fops_release: objects form a graph of user counts, so repeatedly destroy
  // the ones nobody uses; their destroy drops the counts of the ones they used.
  std::lock_guard<std::mutex> g(mu);
  while (!objects.empty()) {
    std::vector<std::shared_ptr<Object>> leaves;
    for (const auto& [id, obj] : objects.all()) {
      if (obj->users == 0) leaves.push_back(obj);
    }
    if (leaves.empty()) break;  // a refcount bug; drop the rest without callbacks
    for (auto& obj : leaves) {
      if (obj->users != 0 || !objects.find_any(obj->id)) continue;  // changed by an earlier destroy
      objects.erase(obj->id);
      obj->destroy(*this);
    }
  }
}

AccountMode IommufdCtx::account_mode() const noexcept {
  if (config.cap_ipc_lock) return AccountMode::kNone;
  return account_per_mm ? AccountMode::kMm : AccountMode::kUser;
}

int IommufdCtx::destroy_object(std::uint32_t id) {
  auto obj = objects.find(id);
  if (!obj) return -ENOENT;
  if (obj->users != 0) return -EBUSY;
  objects.erase(id);
  if (vfio_ioas_id == id) vfio_ioas_id = 0;
  obj->destroy(*this);
  return 0;
}

void IommufdCtx::remove_object(const std::shared_ptr<Object>& obj) {
  if (objects.find_any(obj->id) != obj) return;
  objects.erase(obj->id);
  if (vfio_ioas_id == obj->id) vfio_ioas_id = 0;
  obj->destroy(*this);
}

int iommufd_destroy(Ucmd& u) {
  return u.ctx.destroy_object(u.get<uapi::iommu_destroy>().id);
}

}  // namespace fastmap::sim
