// One open /dev/iommu: the kernel's struct iommufd_ctx.
//
// Locking: `mu` serializes every ioctl on the context and every device-API call the VFIO
// side makes into it, so the object table, IOAS trees and HWPT lists need no finer locks.
// Domains are thread-safe on their own, so device DMA runs without this lock.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>

#include "sim/core/config.h"
#include "sim/iommufd/objects.h"

namespace fastmap::sim {

class KernelCore;

// How pinned pages are charged (IOMMU_OPTION_RLIMIT_MODE; CAP_IPC_LOCK means none).
enum class AccountMode { kNone, kUser, kMm };

class IommufdCtx : public std::enable_shared_from_this<IommufdCtx> {
 public:
  explicit IommufdCtx(KernelCore& kernel);
  // release(): destroys the remaining objects leaves first.
  ~IommufdCtx();
  IommufdCtx(const IommufdCtx&) = delete;
  IommufdCtx& operator=(const IommufdCtx&) = delete;

  KernelCore& kernel;
  const SimConfig config;

  std::mutex mu;
  ObjectTable objects;
  // RLIMIT_MODE: false = per-user (the default), true = per-mm.
  bool account_per_mm = false;
  // The IOAS the VFIO compat ioctls act on (0: none). Not a user of the IOAS: destroying
  // the IOAS clears it.
  std::uint32_t vfio_ioas_id = 0;

  // The charging mode new pinned memory gets.
  AccountMode account_mode() const noexcept;

  // IOMMU_DESTROY: removes `id` and runs its destroy. 0, -ENOENT, -EBUSY (users).
  int destroy_object(std::uint32_t id);
  // Removes an object we hold (auto HWPT, aborted creation) regardless of users.
  void remove_object(const std::shared_ptr<Object>& obj);
};

}  // namespace fastmap::sim
