// The edu device's VFIO migration record: a header (magic, version, length, identification)
// then every register and the 4 KiB DMA buffer, little-endian fixed-width fields.
#include <cerrno>
#include <cstring>

#include "sim/vfio/edu.h"

namespace fastmap::sim::vfio {

namespace {

constexpr std::uint32_t kMagic = 0x4d554445;  // "EDUM"
constexpr std::uint32_t kVersion = 1;
// magic, version, length, ident, liveness, factorial, status, irq status (u32 each), dma
// src/dst/count/cmd/mask (u64 each), buffer.
constexpr std::size_t kRecordSize = 8 * 4 + 5 * 8 + EduDevice::kDmaSize;

template <typename T>
void put(std::vector<std::uint8_t>* out, T v) {
  std::uint8_t b[sizeof v];
  std::memcpy(b, &v, sizeof v);
  out->insert(out->end(), b, b + sizeof v);
}

template <typename T>
T get(const std::uint8_t*& p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  p += sizeof v;
  return v;
}

}  // namespace

void EduDevice::model_save(std::vector<std::uint8_t>* out) const {
  out->reserve(kRecordSize);
  put<std::uint32_t>(out, kMagic);
  put<std::uint32_t>(out, kVersion);
  put<std::uint32_t>(out, static_cast<std::uint32_t>(kRecordSize));
  put<std::uint32_t>(out, kIdent);
  put<std::uint32_t>(out, addr4_);
  put<std::uint32_t>(out, fact_);
  put<std::uint32_t>(out, status_);
  put<std::uint32_t>(out, irq_status_);
  put<std::uint64_t>(out, dma_src_);
  put<std::uint64_t>(out, dma_dst_);
  put<std::uint64_t>(out, dma_cnt_);
  put<std::uint64_t>(out, dma_cmd_);
  put<std::uint64_t>(out, dma_mask_);
  out->insert(out->end(), buf_.begin(), buf_.end());
}

int EduDevice::model_load(const std::uint8_t* data, std::size_t len) {
  if (len != kRecordSize) return -EINVAL;
  const std::uint8_t* p = data;
  if (get<std::uint32_t>(p) != kMagic || get<std::uint32_t>(p) != kVersion ||
      get<std::uint32_t>(p) != kRecordSize || get<std::uint32_t>(p) != kIdent) {
    return -EINVAL;  // another device's state, or another layout
  }
  const std::uint32_t addr4 = get<std::uint32_t>(p);
  const std::uint32_t fact = get<std::uint32_t>(p);
  const std::uint32_t status = get<std::uint32_t>(p);
  const std::uint32_t irq_status = get<std::uint32_t>(p);
  const std::uint64_t src = get<std::uint64_t>(p), dst = get<std::uint64_t>(p);
  const std::uint64_t cnt = get<std::uint64_t>(p), cmd = get<std::uint64_t>(p);
  const std::uint64_t mask = get<std::uint64_t>(p);
  // A stopped edu has no transfer or computation in flight: a record claiming one is not
  // a state this device can be in.
  if ((cmd & kDmaRun) || (status & kStatusComputing)) return -EINVAL;
  addr4_ = addr4;
  fact_ = fact;
  status_ = status;
  dma_src_ = src;
  dma_dst_ = dst;
  dma_cnt_ = cnt;
  dma_cmd_ = cmd;
  dma_mask_ = mask;
  std::memcpy(buf_.data(), p, kDmaSize);
  // The interrupt line follows the restored status (INTx level; MSI messages are edges
  // already delivered on the source).
  irq_status_ = irq_status;
  if (!msi_enabled()) set_intx(irq_status_ != 0);
  return 0;
}

}  // namespace fastmap::sim::vfio
