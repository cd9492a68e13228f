// The two IOMMUs the simulator offers devices: QEMU's emulated VT-d and the iommufd
// selftest's mock IOMMU. Values are the ones those implementations report.
#include "sim/iommu/iommu_model.h"

#include <cstring>

#include "sim/core/user_memory.h"
#include "uapi/iommufd.h"
#include "uapi/iommufd_test.h"

namespace fastmap::sim {

namespace {

template <class T>
std::vector<std::uint8_t> bytes_of(const T& v) {
  std::vector<std::uint8_t> out(sizeof v);
  std::memcpy(out.data(), &v, sizeof v);
  return out;
}

// VT-d capability register fields (VT-d spec 11.4.2) for QEMU's intel-iommu with its
// defaults: 48-bit address width (QEMU 9.2+), 3- and 4-level tables, 2M and 1G pages,
// 16-bit domain ids, page-selective invalidation, DMA draining, one fault record at 0x220.
constexpr std::uint64_t kVtdAwBits = 48;
constexpr std::uint64_t kCapNd16BitDomains = 6;                   // ND, bits 2:0
constexpr std::uint64_t kCapSagaw39And48 = (0x2ull | 0x4ull) << 8;  // SAGAW, bits 12:8
constexpr std::uint64_t kCapMgaw = (kVtdAwBits - 1) << 16;         // MGAW, bits 21:16
constexpr std::uint64_t kCapFro = (0x220ull >> 4) << 24;           // FRO, bits 33:24
constexpr std::uint64_t kCapSllps2M1G = (1ull << 34) | (1ull << 35);
constexpr std::uint64_t kCapPsi = 1ull << 39;
constexpr std::uint64_t kCapMamv = 18ull << 48;
constexpr std::uint64_t kCapDrain = (1ull << 54) | (1ull << 55);

// Extended capabilities: queued invalidation, IOTLB registers at 0xf0, pass-through.
constexpr std::uint64_t kEcapQi = 1ull << 1;
constexpr std::uint64_t kEcapIro = (0xf0ull >> 4) << 8;
constexpr std::uint64_t kEcapPt = 1ull << 6;
// Scalable mode with second-stage tables and their access/dirty bits: what Linux's
// intel-iommu needs to offer dirty tracking (ssads_supported: SMTS and SLADS).
constexpr std::uint64_t kEcapSmts = 1ull << 43;
constexpr std::uint64_t kEcapSlads = 1ull << 45;
constexpr std::uint64_t kEcapSlts = 1ull << 46;

}  // namespace

IommuModel IommuModel::vtd(bool dirty_tracking) {
  IommuModel m;
  m.kind = Kind::kVtd;
  m.aperture_start = 0;
  m.aperture_last = (1ull << kVtdAwBits) - 1;
  m.reserved = {IovaRange{0xfee00000ull, 0xfeefffffull}};  // the x86 MSI window
  m.pgsize_bitmap = (1ull << 12) | (1ull << 21) | (1ull << 30);
  m.dirty_tracking = dirty_tracking;
  // No snoop control in ecap (QEMU's intel-iommu default): intel_iommu cannot enforce
  // cache coherency, so VFIO_DMA_CC_IOMMU says 0 (as 6.12.95 behind QEMU's VT-d does).
  m.enforce_cache_coherency = false;
  m.hw_info_type = uapi::IOMMU_HW_INFO_TYPE_INTEL_VTD;
  uapi::iommu_hw_info_vtd info{};
  info.cap_reg = kCapNd16BitDomains | kCapSagaw39And48 | kCapMgaw | kCapFro | kCapSllps2M1G |
                 kCapPsi | kCapMamv | kCapDrain;
  info.ecap_reg = kEcapQi | kEcapIro | kEcapPt;
  if (dirty_tracking) info.ecap_reg |= kEcapSmts | kEcapSlts | kEcapSlads;
  m.hw_info = bytes_of(info);
  return m;
}

IommuModel IommuModel::mock(bool dirty_tracking) {
  // MOCK_IO_PAGE_SIZE is half a host page, MOCK_HUGE_PAGE_SIZE 512 of those.
  const std::uint64_t io_page = host_page_size() / 2;
  IommuModel m;
  m.kind = Kind::kMock;
  m.aperture_start = uapi::MOCK_APERTURE_START;
  m.aperture_last = uapi::MOCK_APERTURE_LAST;
  m.reserved.clear();
  m.pgsize_bitmap = io_page | (io_page * 512);
  m.dirty_tracking = dirty_tracking;
  m.enforce_cache_coherency = true;
  m.hw_info_type = uapi::IOMMU_HW_INFO_TYPE_SELFTEST;
  struct {
    std::uint32_t flags;
    std::uint32_t test_reg;
  } info{0, uapi::IOMMU_HW_INFO_SELFTEST_REGVAL};
  m.hw_info = bytes_of(info);
  return m;
}

}  // namespace fastmap::sim
