// Summaries of a Domain's dirty bits and fault log, for tests and benchmarks that want a
// number or a list rather than a callback per IOPTE.
#pragma once

#include <cstdint>
#include <vector>

#include "sim/iommu/domain.h"

namespace fastmap::sim {

// Pages of page_size (non-zero) that read_and_clear_dirty over [iova, iova+length) reports
// dirty, counted without building a list (a harvest's cost without the Python objects).
std::uint64_t count_dirty_pages(Domain& d, std::uint64_t iova, std::uint64_t length,
                                std::uint64_t page_size, bool no_clear);

// The whole fault log, oldest first; empties it.
std::vector<DmaFault> take_all_faults(Domain& d);

}  // namespace fastmap::sim
