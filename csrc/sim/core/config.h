// What the simulated kernel models: the kernel version (for features that came later, such
// as IOMMU_IOAS_MAP_FILE in 6.13) and the knobs a real kernel takes from its config,
// module parameters and the caller's credentials.
#pragma once

#include <cstdint>

namespace fastmap::sim {

struct SimConfig {
  // Linux version modelled, as major*100+minor (612 = 6.12, 613 = 6.13).
  int kernel_version = 613;
  // CONFIG_TRANSPARENT_HUGEPAGE: caps automatic IOVA alignment at 2 MiB, else PAGE_SIZE.
  bool transparent_hugepage = true;
  // CONFIG_IOMMUFD_TEST: IOMMU_TEST_CMD exists.
  bool iommufd_test = true;
  // vfio_iommu_type1.dma_entry_limit.
  std::uint32_t dma_entry_limit = 65535;
  // The caller holds CAP_SYS_RESOURCE / CAP_IPC_LOCK.
  bool cap_sys_resource = true;
  bool cap_ipc_lock = true;
  // RLIMIT_MEMLOCK in bytes for pinned-page accounting when not CAP_IPC_LOCK.
  std::uint64_t rlimit_memlock = 8ull << 20;
};

}  // namespace fastmap::sim
