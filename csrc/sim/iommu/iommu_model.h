// What an IOMMU driver offers a device: the properties iommufd and Type1 read when a device
// is attached (aperture, reserved regions, page sizes, dirty tracking, GET_HW_INFO record).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fastmap::sim {

struct IovaRange {
  std::uint64_t start;
  std::uint64_t last;  // inclusive, as in the uAPI
};

struct IommuModel {
  enum class Kind { kVtd, kMock, kVirtio };
  Kind kind = Kind::kVtd;
  std::uint64_t aperture_start = 0;
  std::uint64_t aperture_last = (1ull << 48) - 1;
  // Device reserved regions (x86: the MSI window 0xfee00000-0xfeefffff; RMRRs).
  std::vector<IovaRange> reserved;
  // Supported IOPTE sizes; the smallest sets iova_alignment.
  std::uint64_t pgsize_bitmap = (1ull << 12) | (1ull << 21) | (1ull << 30);
  bool dirty_tracking = false;          // IOMMU_CAP_DIRTY_TRACKING
  bool enforce_cache_coherency = true;
  std::uint32_t hw_info_type = 0;       // IOMMU_HW_INFO_TYPE_*
  std::vector<std::uint8_t> hw_info;    // the driver's GET_HW_INFO record

  // Emulated Intel VT-d as QEMU presents it (48-bit aperture, MSI window reserved).
  static IommuModel vtd(bool dirty_tracking);
  // The iommufd selftest mock IOMMU (aperture [1<<24, (1<<31)-1], PAGE_SIZE/2 pages).
  static IommuModel mock(bool dirty_tracking);
};

}  // namespace fastmap::sim
