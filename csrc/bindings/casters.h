// Type casters: the engine's range structs as the tuples fastmap's Python code uses.
// IovaRange <-> (start, last); IovaEntry -> (start, last, reserved).
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <utility>

#include "engine/iova_allocator.h"

namespace pybind11::detail {

template <>
struct type_caster<fastmap::engine::IovaRange> {
  PYBIND11_TYPE_CASTER(fastmap::engine::IovaRange, const_name("tuple[int, int]"));

  bool load(handle src, bool convert) {
    make_caster<std::pair<std::uint64_t, std::uint64_t>> pair;
    if (!pair.load(src, convert)) return false;
    const auto& p = cast_op<const std::pair<std::uint64_t, std::uint64_t>&>(pair);
    value = {p.first, p.second};
    return true;
  }

  static handle cast(const fastmap::engine::IovaRange& r, return_value_policy, handle) {
    return pybind11::make_tuple(r.start, r.last).release();
  }
};

template <>
struct type_caster<fastmap::engine::IovaEntry> {
  PYBIND11_TYPE_CASTER(fastmap::engine::IovaEntry, const_name("tuple[int, int, bool]"));

  // Output only: nothing passes an entry in.
  bool load(handle, bool) { return false; }

  static handle cast(const fastmap::engine::IovaEntry& e, return_value_policy, handle) {
    return pybind11::make_tuple(e.start, e.last, e.reserved).release();
  }
};

}  // namespace pybind11::detail
