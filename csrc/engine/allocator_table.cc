#include "engine/allocator_table.h"

namespace fastmap::engine {

RangeTable range_table(const IovaAllocator& a, bool include_reserved) {
  RangeTable t;
  const std::size_t n = a.allocated_count() + (include_reserved ? a.reserved_count() : 0);
  t.starts.reserve(n);
  t.lasts.reserve(n);
  t.reserved.reserve(n);
  a.for_each([&](const IovaEntry& e) {
    if (e.reserved && !include_reserved) return;
    t.starts.push_back(e.start);
    t.lasts.push_back(e.last);
    t.reserved.push_back(e.reserved ? 1 : 0);
  });
  return t;
}

}  // namespace fastmap::engine
