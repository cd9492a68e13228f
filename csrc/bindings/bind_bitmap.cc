// Dirty bitmaps and the dirty harvester: numpy uint64 arrays in and out, GIL released.
// fastmap.bitmap and fastmap.dirty validate arguments with messages; the core's checks
// (engine/bitmap_checked.h) only keep a bad call from reaching memory it should not.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <new>
#include <optional>
#include <span>
#include <tuple>

#include "bindings/bindings.h"
#include "bindings/errno_error.h"
#include "engine/bitmap_checked.h"
#include "engine/bitmap_ops.h"
#include "engine/dirty_harvester.h"

namespace py = pybind11;

namespace fastmap::bindings {

namespace {

namespace bm = engine::bitmap;

using U64Array = py::array_t<std::uint64_t, py::array::c_style>;
using U32Array = py::array_t<std::uint32_t, py::array::c_style>;

std::span<const std::uint64_t> view(const U64Array& a) {
  return {a.data(), static_cast<std::size_t>(a.size())};
}

std::span<std::uint64_t> mutable_view(U64Array& a) {
  return {a.mutable_data(), static_cast<std::size_t>(a.size())};
}

// The harvester refers to its Kernel; the Python object keeps the kernel alive with it.
struct PyHarvester {
  std::shared_ptr<Kernel> kernel;
  engine::DirtyHarvester harvester;
  PyHarvester(std::shared_ptr<Kernel> k, int fd) : kernel(std::move(k)), harvester(*kernel, fd) {}
};

}  // namespace

void bind_bitmap(py::module_& m) {
  m.def("bitmap_or_merge", [](U64Array dst, const U64Array& src) {
    auto d = mutable_view(dst);
    check(bm::check_same_length(d, view(src)), "bitmap_or_merge");
    py::gil_scoped_release nogil;
    bm::or_merge(d, view(src));
  }, py::arg("dst").noconvert(), py::arg("src").noconvert());

  m.def("bitmap_popcount", [](const U64Array& a, std::uint64_t nbits) {
    check(bm::check_nbits(view(a), nbits), "bitmap_popcount");
    py::gil_scoped_release nogil;
    return bm::popcount(view(a), nbits);
  }, py::arg("bm").noconvert(), py::arg("nbits"));

  m.def("bitmap_count_floor", [](const U64Array& a) {
    py::gil_scoped_release nogil;
    return bm::count_floor(view(a));
  }, py::arg("bm").noconvert());

  m.def("bitmap_to_ranges", [](const U64Array& a, std::uint64_t nbits) {
    check(bm::check_nbits(view(a), nbits), "bitmap_to_ranges");
    std::optional<bm::RangeScan> scan;
    {
      py::gil_scoped_release nogil;
      scan.emplace(view(a), nbits);
    }
    U64Array out({static_cast<py::ssize_t>(scan->count()), py::ssize_t{2}});
    auto o = mutable_view(out);
    {
      py::gil_scoped_release nogil;
      scan->write(o);
    }
    return out;
  }, py::arg("bm").noconvert(), py::arg("nbits"), "-> (N, 2) [first_page, page_count]");

  m.def("bitmap_from_ranges", [](const U64Array& pairs, std::uint64_t nbits) {
    check(bm::check_pairs(view(pairs)), "bitmap_from_ranges");
    U64Array out(static_cast<py::ssize_t>(bm::words_for(nbits)));
    auto o = mutable_view(out);
    long long bad;
    {
      py::gil_scoped_release nogil;
      std::fill(o.begin(), o.end(), 0);
      bad = bm::from_ranges(view(pairs), o, nbits);
    }
    return std::make_tuple(out, bad);
  }, py::arg("ranges").noconvert(), py::arg("nbits"),
     "-> (bitmap, -1), or (unspecified, index of the first row that ends past nbits)");

  m.def("bitmap_words", &bm::words_for_length, py::arg("length"), py::arg("page_size"),
        "u64 words of the bitmap for `length` bytes at `page_size` (the one definition)");

  m.def("bitmap_converted_nbits", &bm::converted_nbits, py::arg("nbits"), py::arg("from_page"),
        py::arg("to_page"));

  m.def("bitmap_convert", [](const U64Array& a, std::uint64_t nbits, std::uint64_t from_page,
                             std::uint64_t to_page) {
    check(bm::check_nbits(view(a), nbits), "bitmap_convert");
    std::uint64_t words = 0;
    check(bm::converted_words(nbits, from_page, to_page, &words), "bitmap_convert");
    U64Array out(static_cast<py::ssize_t>(words));
    auto o = mutable_view(out);
    {
      py::gil_scoped_release nogil;
      bm::convert(view(a), nbits, from_page, to_page, o);
    }
    return out;
  }, py::arg("bm").noconvert(), py::arg("nbits"), py::arg("from_page"), py::arg("to_page"));

  py::class_<PyHarvester>(m, "DirtyHarvester")
      .def(py::init<std::shared_ptr<Kernel>, int>(), py::arg("kernel"), py::arg("iommufd"))
      .def_property_readonly("iommufd", [](const PyHarvester& p) { return p.harvester.iommufd(); })
      .def("harvest", [](PyHarvester& p, const U32Array& hwpt_ids, const U64Array& iovas,
                         const U64Array& lengths, std::uint64_t page_size, U64Array out,
                         bool no_clear) -> std::optional<std::tuple<int, std::uint32_t, std::size_t>> {
        std::span<const std::uint32_t> hwpts{hwpt_ids.data(), static_cast<std::size_t>(hwpt_ids.size())};
        auto o = mutable_view(out);
        engine::HarvestError err;
        {
          py::gil_scoped_release nogil;
          err = p.harvester.harvest(hwpts, view(iovas), view(lengths), page_size, o, no_clear);
        }
        if (!err) return std::nullopt;
        return std::make_tuple(err.errno_value, err.hwpt_id, err.range_index);
      }, py::arg("hwpt_ids").noconvert(), py::arg("iovas").noconvert(),
         py::arg("lengths").noconvert(), py::arg("page_size"), py::arg("out").noconvert(),
         py::arg("no_clear") = false, "-> None | (errno, hwpt_id, range_index)");
}

}  // namespace fastmap::bindings
