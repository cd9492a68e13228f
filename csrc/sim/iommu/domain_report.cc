#include "sim/iommu/domain_report.h"

#include <cstddef>

namespace fastmap::sim {

std::uint64_t count_dirty_pages(Domain& d, std::uint64_t iova, std::uint64_t length,
                                std::uint64_t page_size, bool no_clear) {
  std::uint64_t pages = 0;
  d.read_and_clear_dirty(iova, length, no_clear, [&](std::uint64_t a, std::uint64_t b) {
    pages += b / page_size - a / page_size + 1;
  });
  return pages;
}

std::vector<DmaFault> take_all_faults(Domain& d) {
  constexpr std::size_t kChunk = 64;
  std::vector<DmaFault> out;
  for (;;) {
    const std::size_t had = out.size();
    out.resize(had + kChunk);
    const std::size_t n = d.take_faults(out.data() + had, kChunk);
    out.resize(had + n);
    if (n < kChunk) return out;
  }
}

}  // namespace fastmap::sim
