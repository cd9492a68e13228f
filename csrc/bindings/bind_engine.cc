// The engine's standalone IOVA allocator. Results come back as (-errno, value) tuples;
// fastmap.allocator turns them into typed exceptions. Batch calls take and return numpy
// arrays and run without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <tuple>
#include <utility>
#include <vector>

#include "bindings/bindings.h"
#include "engine/iova_allocator.h"

namespace py = pybind11;

namespace fastmap::bindings {

namespace {

using engine::Fit;
using engine::IovaAllocator;
using engine::IovaRange;
using U64Array = py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast>;

// The engine objects are not thread-safe and batch calls run without the GIL, so every bound
// object carries a mutex. No thread ever waits for it while holding the GIL, so a batch in
// one thread cannot stall the interpreter or deadlock against a single call in another.
template <typename T>
struct Guarded {
  T obj;
  std::mutex mu;
};

// For calls made with the GIL held.
std::unique_lock<std::mutex> lock_holding_gil(std::mutex& mu) {
  std::unique_lock<std::mutex> lk(mu, std::try_to_lock);
  if (!lk.owns_lock()) {
    py::gil_scoped_release nogil;
    lk.lock();
  }
  return lk;
}

std::span<const std::uint64_t> view(const U64Array& a) {
  return {a.data(), static_cast<std::size_t>(a.size())};
}

using GuardedAllocator = Guarded<IovaAllocator>;

void bind_allocator(py::module_& m) {
  py::class_<GuardedAllocator>(m, "IovaAllocator")
      .def(py::init<>())
      .def("restrict_to", [](GuardedAllocator& g,
                             const std::vector<std::pair<std::uint64_t, std::uint64_t>>& r) {
        std::vector<IovaRange> ranges;
        for (const auto& [s, l] : r) ranges.push_back({s, l});
        auto lk = lock_holding_gil(g.mu);
        return g.obj.restrict_to(ranges);
      }, py::arg("allowed"))
      .def("reserve", [](GuardedAllocator& g, std::uint64_t start, std::uint64_t last) {
        auto lk = lock_holding_gil(g.mu);
        return g.obj.reserve(start, last);
      }, py::arg("start"), py::arg("last"))
      .def("set_huge_page_sizes", [](GuardedAllocator& g, const std::vector<std::uint64_t>& s) {
        auto lk = lock_holding_gil(g.mu);
        return g.obj.set_huge_page_sizes(s);
      }, py::arg("sizes"))
      .def_property_readonly("huge_page_sizes", [](GuardedAllocator& g) {
        auto lk = lock_holding_gil(g.mu);
        auto s = g.obj.huge_page_sizes();
        return std::vector<std::uint64_t>(s.begin(), s.end());
      })
      .def("alloc", [](GuardedAllocator& g, std::uint64_t length, std::uint64_t align,
                       std::optional<std::uint64_t> hint_va, int fit) {
        std::uint64_t iova = 0;
        auto lk = lock_holding_gil(g.mu);
        const int err = g.obj.alloc({length, align, hint_va, static_cast<Fit>(fit)}, &iova);
        return std::make_pair(err, iova);
      }, py::arg("length"), py::arg("align"), py::arg("hint_va"), py::arg("fit"))
      .def("alloc_fixed", [](GuardedAllocator& g, std::uint64_t iova, std::uint64_t length) {
        auto lk = lock_holding_gil(g.mu);
        return g.obj.alloc_fixed(iova, length);
      }, py::arg("iova"), py::arg("length"))
      .def("free", [](GuardedAllocator& g, std::uint64_t iova) {
        IovaRange r{0, 0};
        auto lk = lock_holding_gil(g.mu);
        const int err = g.obj.free(iova, &r);
        return std::make_tuple(err, r.start, r.last);
      }, py::arg("iova"))
      .def("free_range", [](GuardedAllocator& g, std::uint64_t iova, std::uint64_t length) {
        auto lk = lock_holding_gil(g.mu);
        return g.obj.free(iova, length);
      }, py::arg("iova"), py::arg("length"))
      .def("bulk_alloc", [](GuardedAllocator& g, const U64Array& lengths, std::uint64_t align,
                            const std::optional<U64Array>& hint_vas, int fit) {
        U64Array out(lengths.size());
        std::span<std::uint64_t> dst{out.mutable_data(), static_cast<std::size_t>(out.size())};
        std::span<const std::uint64_t> hints;
        if (hint_vas) hints = view(*hint_vas);
        std::size_t failed = 0;
        int err;
        {
          py::gil_scoped_release nogil;
          std::lock_guard<std::mutex> lk(g.mu);
          err = g.obj.bulk_alloc(view(lengths), align, hints, static_cast<Fit>(fit), dst,
                                 &failed);
        }
        return std::make_tuple(err, failed, out);
      }, py::arg("lengths"), py::arg("align"), py::arg("hint_vas"), py::arg("fit"))
      .def("bulk_free", [](GuardedAllocator& g, const U64Array& iovas) {
        std::size_t failed = 0;
        int err;
        {
          py::gil_scoped_release nogil;
          std::lock_guard<std::mutex> lk(g.mu);
          err = g.obj.bulk_free(view(iovas), &failed);
        }
        return std::make_pair(err, failed);
      }, py::arg("iovas"))
      .def("find", [](GuardedAllocator& g, std::uint64_t iova)
                       -> std::optional<std::tuple<std::uint64_t, std::uint64_t, bool>> {
        auto lk = lock_holding_gil(g.mu);
        auto e = g.obj.find(iova);
        if (!e) return std::nullopt;
        return std::make_tuple(e->start, e->last, e->reserved);
      }, py::arg("iova"))
      .def("contains", [](GuardedAllocator& g, std::uint64_t iova) {
        auto lk = lock_holding_gil(g.mu);
        return g.obj.contains(iova);
      }, py::arg("iova"))
      .def("largest_free_gap", [](GuardedAllocator& g)
                                   -> std::optional<std::pair<std::uint64_t, std::uint64_t>> {
        auto lk = lock_holding_gil(g.mu);
        auto r = g.obj.largest_free_gap();
        if (!r) return std::nullopt;
        return std::make_pair(r->start, r->last);
      })
      .def_property_readonly("allocated_count", [](GuardedAllocator& g) {
        auto lk = lock_holding_gil(g.mu);
        return g.obj.allocated_count();
      })
      .def_property_readonly("reserved_count", [](GuardedAllocator& g) {
        auto lk = lock_holding_gil(g.mu);
        return g.obj.reserved_count();
      })
      // (starts, lasts, reserved) of every range in address order.
      .def("ranges", [](GuardedAllocator& g, bool include_reserved) {
        auto lk = lock_holding_gil(g.mu);
        const std::size_t n = include_reserved
                                  ? g.obj.allocated_count() + g.obj.reserved_count()
                                  : g.obj.allocated_count();
        U64Array starts(n);
        U64Array lasts(n);
        py::array_t<bool> reserved(n);
        auto* s = starts.mutable_data();
        auto* l = lasts.mutable_data();
        auto* r = reserved.mutable_data();
        std::size_t i = 0;
        g.obj.for_each([&](const engine::IovaEntry& e) {
          if (e.reserved && !include_reserved) return;
          s[i] = e.start;
          l[i] = e.last;
          r[i] = e.reserved;
          ++i;
        });
        return std::make_tuple(starts, lasts, reserved);
      }, py::arg("include_reserved"))
      .def("check_invariants", [](GuardedAllocator& g) {
        auto lk = lock_holding_gil(g.mu);
        return g.obj.check_invariants();
      });
}

}  // namespace

void bind_engine(py::module_& m) {
  bind_allocator(m);
}

}  // namespace fastmap::bindings
