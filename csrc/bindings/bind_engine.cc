// The engine's standalone IOVA allocator. Results come back as (-errno, value) tuples;
// fastmap.allocator turns them into typed exceptions. Batch calls take and return numpy
// arrays and run without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <span>
#include <tuple>
#include <utility>
#include <vector>

#include "bindings/bindings.h"
#include "bindings/casters.h"
#include "engine/allocator_table.h"
#include "engine/iova_allocator.h"
#include "engine/locked.h"

namespace py = pybind11;

namespace fastmap::bindings {

namespace {

using engine::Fit;
using engine::IovaAllocator;
using engine::IovaRange;
using U64Array = py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast>;

std::span<const std::uint64_t> view(const U64Array& a) {
  return {a.data(), static_cast<std::size_t>(a.size())};
}

// The allocator is not thread-safe; engine::Locked is its locking policy. Every call
// releases the GIL before it takes the lock (see locked.h).
using LockedAllocator = engine::Locked<IovaAllocator>;
using Nogil = py::call_guard<py::gil_scoped_release>;

void bind_allocator(py::module_& m) {
  py::class_<LockedAllocator>(m, "IovaAllocator")
      .def(py::init<>())
      .def("restrict_to", [](LockedAllocator& g, const std::vector<IovaRange>& ranges) {
        return g.with([&](IovaAllocator& a) { return a.restrict_to(ranges); });
      }, py::arg("allowed"), Nogil())
      .def("reserve", [](LockedAllocator& g, std::uint64_t start, std::uint64_t last) {
        return g.with([&](IovaAllocator& a) { return a.reserve(start, last); });
      }, py::arg("start"), py::arg("last"), Nogil())
      .def("set_huge_page_sizes", [](LockedAllocator& g, const std::vector<std::uint64_t>& s) {
        return g.with([&](IovaAllocator& a) { return a.set_huge_page_sizes(s); });
      }, py::arg("sizes"), Nogil())
      .def_property_readonly("huge_page_sizes", [](LockedAllocator& g) {
        py::gil_scoped_release nogil;
        return g.with([&](IovaAllocator& a) {
          auto s = a.huge_page_sizes();
          return std::vector<std::uint64_t>(s.begin(), s.end());
        });
      })
      .def("alloc", [](LockedAllocator& g, std::uint64_t length, std::uint64_t align,
                       std::optional<std::uint64_t> hint_va, int fit) {
        std::uint64_t iova = 0;
        const int err = g.with([&](IovaAllocator& a) {
          return a.alloc({length, align, hint_va, static_cast<Fit>(fit)}, &iova);
        });
        return std::make_pair(err, iova);
      }, py::arg("length"), py::arg("align"), py::arg("hint_va"), py::arg("fit"), Nogil())
      .def("alloc_fixed", [](LockedAllocator& g, std::uint64_t iova, std::uint64_t length) {
        return g.with([&](IovaAllocator& a) { return a.alloc_fixed(iova, length); });
      }, py::arg("iova"), py::arg("length"), Nogil())
      .def("free", [](LockedAllocator& g, std::uint64_t iova) {
        IovaRange r{0, 0};
        const int err = g.with([&](IovaAllocator& a) { return a.free(iova, &r); });
        return std::make_tuple(err, r.start, r.last);
      }, py::arg("iova"), Nogil())
      .def("free_range", [](LockedAllocator& g, std::uint64_t iova, std::uint64_t length) {
        return g.with([&](IovaAllocator& a) { return a.free(iova, length); });
      }, py::arg("iova"), py::arg("length"), Nogil())
      .def("bulk_alloc", [](LockedAllocator& g, const U64Array& lengths, std::uint64_t align,
                            const std::optional<U64Array>& hint_vas, int fit) {
        U64Array out(lengths.size());
        std::span<std::uint64_t> dst{out.mutable_data(), static_cast<std::size_t>(out.size())};
        std::span<const std::uint64_t> hints;
        if (hint_vas) hints = view(*hint_vas);
        std::size_t failed = 0;
        int err;
        {
          py::gil_scoped_release nogil;
          err = g.with([&](IovaAllocator& a) {
            return a.bulk_alloc(view(lengths), align, hints, static_cast<Fit>(fit), dst, &failed);
          });
        }
        return std::make_tuple(err, failed, out);
      }, py::arg("lengths"), py::arg("align"), py::arg("hint_vas"), py::arg("fit"))
      .def("bulk_free", [](LockedAllocator& g, const U64Array& iovas) {
        std::size_t failed = 0;
        const int err = g.with([&](IovaAllocator& a) { return a.bulk_free(view(iovas), &failed); });
        return std::make_pair(err, failed);
      }, py::arg("iovas"), Nogil())
      .def("find", [](LockedAllocator& g, std::uint64_t iova) {
        return g.with([&](IovaAllocator& a) { return a.find(iova); });
      }, py::arg("iova"), Nogil(), "-> None | (start, last, reserved)")
      .def("contains", [](LockedAllocator& g, std::uint64_t iova) {
        return g.with([&](IovaAllocator& a) { return a.contains(iova); });
      }, py::arg("iova"), Nogil())
      .def("largest_free_gap", [](LockedAllocator& g) {
        return g.with([&](IovaAllocator& a) { return a.largest_free_gap(); });
      }, Nogil(), "-> None | (start, last)")
      .def_property_readonly("allocated_count", [](LockedAllocator& g) {
        py::gil_scoped_release nogil;
        return g.with([&](IovaAllocator& a) { return a.allocated_count(); });
      })
      .def_property_readonly("reserved_count", [](LockedAllocator& g) {
        py::gil_scoped_release nogil;
        return g.with([&](IovaAllocator& a) { return a.reserved_count(); });
      })
      .def("ranges", [](LockedAllocator& g, bool include_reserved) {
        engine::RangeTable t;
        {
          py::gil_scoped_release nogil;
          t = g.with([&](IovaAllocator& a) { return engine::range_table(a, include_reserved); });
        }
        const auto n = static_cast<py::ssize_t>(t.starts.size());
        return std::make_tuple(U64Array(n, t.starts.data()), U64Array(n, t.lasts.data()),
                               py::array_t<bool>(n, reinterpret_cast<const bool*>(t.reserved.data())));
      }, py::arg("include_reserved"), "-> (starts, lasts, reserved) in address order")
      .def("check_invariants", [](LockedAllocator& g) {
        return g.with([&](IovaAllocator& a) { return a.check_invariants(); });
      }, Nogil());
}

}  // namespace

void bind_engine(py::module_& m) {
  bind_allocator(m);
}

}  // namespace fastmap::bindings
