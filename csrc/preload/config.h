// FASTMAP_SIM_CONFIG: the simulated machine sim-run builds, as `key=value` entries
// separated by newlines or ';' ('#' starts a comment):
//   kernel_version=612   thp=1   iommufd_test=1   memlock=8388608   cap_ipc_lock=1
//   cap_sys_resource=1   dma_entry_limit=65535
//   device=edu[,bdf=0000:00:03.0][,iommu=vtd|mock][,group=N][,dirty=0|1]   (repeatable)
// A device's IOMMU offers HWPT dirty tracking unless dirty=0 (QEMU's IOMMUFD dirty-tracking
// path for VFIO migration needs it; dirty=0 models an IOMMU without it).
// Unset keys keep the simulator's defaults (see fastmap_sim_config_init).
#pragma once

#include <string>
#include <vector>

#include "fastmap_sim.h"

namespace fastmap::preload {

struct DeviceSetup {
  std::string kind = "edu";
  std::string bdf;
  std::string iommu = "vtd";
  int group = -1;
  int dirty = 1;
};

struct SimSetup {
  fastmap_sim_config config;
  std::vector<DeviceSetup> devices;
};

// false with a message in *err for an unknown key or a malformed value.
bool parse_config(const std::string& text, SimSetup* out, std::string* err);

}  // namespace fastmap::preload
