#include "engine/dirty_harvester.h"

#include <algorithm>
#include <cerrno>

#include "engine/bitmap_ops.h"
#include "uapi/iommufd.h"

namespace fastmap::engine {

HarvestError DirtyHarvester::harvest(std::span<const std::uint32_t> hwpt_ids,
                                     std::span<const std::uint64_t> iovas,
                                     std::span<const std::uint64_t> lengths,
                                     std::uint64_t page_size, std::span<std::uint64_t> out,
                                     bool no_clear) noexcept {
  if (page_size == 0 || iovas.size() != lengths.size()) return {EINVAL, 0, 0};
  // Size every bitmap before the first call, so a short buffer fails cleanly.
  std::uint64_t total = 0;
  for (std::size_t i = 0; i < lengths.size(); ++i) {
    total += bitmap::words_for_length(lengths[i], page_size);
    if (total > out.size()) return {EINVAL, 0, i};
  }

  const std::uint32_t flags = no_clear ? uapi::IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR : 0;
  std::uint64_t* bitmap = out.data();
  for (std::size_t i = 0; i < iovas.size(); ++i) {
    const std::uint64_t words = bitmap::words_for_length(lengths[i], page_size);
    // The kernel only sets bits: the zeroing is what makes this sync's bitmap its own.
    std::fill(bitmap, bitmap + words, 0);
    // Range-major, so one range's bitmap stays in cache while every HWPT ORs into it.
    for (const std::uint32_t hwpt : hwpt_ids) {
      uapi::iommu_hwpt_get_dirty_bitmap cmd{};
      cmd.size = sizeof cmd;
      cmd.hwpt_id = hwpt;
      cmd.flags = flags;
      cmd.iova = iovas[i];
      cmd.length = lengths[i];
      cmd.page_size = page_size;
      cmd.data = reinterpret_cast<std::uintptr_t>(bitmap);
      const long rc = kernel_.ioctl(fd_, uapi::IOMMU_HWPT_GET_DIRTY_BITMAP, &cmd);
      if (rc < 0) return {static_cast<int>(-rc), hwpt, i};
    }
    bitmap += words;
  }
  return {};
}

}  // namespace fastmap::engine
