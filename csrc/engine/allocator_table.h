// The IOVA allocator's ranges as three parallel columns, for callers that want arrays
// (fastmap.allocator's ranges()).
#pragma once

#include <cstdint>
#include <vector>

#include "engine/iova_allocator.h"

namespace fastmap::engine {

struct RangeTable {
  std::vector<std::uint64_t> starts;
  std::vector<std::uint64_t> lasts;
  std::vector<std::uint8_t> reserved;  // 1: a reserved range, 0: an allocation
};

// Every allocation, and the reserved ranges too if include_reserved, in address order.
RangeTable range_table(const IovaAllocator& a, bool include_reserved);

}  // namespace fastmap::engine
