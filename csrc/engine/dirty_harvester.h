// The dirty harvester: one pre-copy sync's worth of IOMMU_HWPT_GET_DIRTY_BITMAP calls.
//
// For every tracked IOVA range it zeroes that range's bitmap and asks every dirty-tracking
// HWPT for the range into it. The kernel only ever sets bits, so the result is the OR over
// the HWPTs, which is what QEMU does when a container has several HWPTs: a page is dirty if
// any device wrote it. The kernel walks arbitrarily large ranges itself, so one call per
// (HWPT, range) is enough. It never throws; the first failure stops the harvest.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "seam/kernel.h"

namespace fastmap::engine {

// Why a harvest failed. errno_value 0 = success.
struct HarvestError {
  int errno_value = 0;
  std::uint32_t hwpt_id = 0;    // the HWPT the failing call named (0: failed before any call)
  std::size_t range_index = 0;  // the range it was for
  explicit operator bool() const noexcept { return errno_value != 0; }
};

class DirtyHarvester {
 public:
  DirtyHarvester(Kernel& kernel, int iommufd) noexcept : kernel_(kernel), fd_(iommufd) {}

  // Harvests ranges [iovas[i], iovas[i] + lengths[i]) from every HWPT of hwpt_ids. The
  // ranges' bitmaps lie back to back in `out`, range 0 first, bitmap::words_for_length(
  // lengths[i], page_size) words each (a partial last page still gets its bit); each is
  // zeroed, then ORed into by one GET_DIRTY_BITMAP per HWPT.
  // no_clear keeps the IOPTE dirty bits (IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR). A zero
  // page_size, mismatched iovas/lengths, or bitmaps that do not fit in `out` are refused with
  // EINVAL before any call (hwpt_id 0).
  HarvestError harvest(std::span<const std::uint32_t> hwpt_ids,
                       std::span<const std::uint64_t> iovas,
                       std::span<const std::uint64_t> lengths, std::uint64_t page_size,
                       std::span<std::uint64_t> out, bool no_clear) noexcept;

  int iommufd() const noexcept { return fd_; }

 private:
  Kernel& kernel_;
  int fd_;
};

}  // namespace fastmap::engine
