// The batch mapping engine: numpy arrays in, numpy arrays and a BatchError tuple out.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <tuple>

#include "bindings/bindings.h"
#include "bindings/casters.h"
#include "capi/c_api.h"
#include "engine/map_engine.h"
#include "engine/map_floor.h"

namespace py = pybind11;

namespace fastmap::bindings {

namespace {

using U64Array = py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast>;
using ErrorTuple = std::optional<std::tuple<int, std::size_t, std::string, bool>>;

std::span<const std::uint64_t> view(const U64Array& a) {
  return {a.data(), static_cast<std::size_t>(a.size())};
}

ErrorTuple to_tuple(const engine::BatchError& e) {
  if (!e) return std::nullopt;
  return std::make_tuple(e.errno_value, e.index, std::string(e.call ? e.call : ""), e.rollback_failed);
}

// The mapper refers to its Kernel; the Python object keeps the kernel alive with it.
struct PyMapper {
  std::shared_ptr<Kernel> kernel;
  engine::IoasMapper mapper;
  PyMapper(std::shared_ptr<Kernel> k, int fd, std::uint32_t ioas)
      : kernel(std::move(k)), mapper(*kernel, fd, ioas) {}
  // Runs with the GIL: pins parked by C API unmaps can be released here. Pins of segments
  // still mapped are kept by the engine (see map_engine.h).
  ~PyMapper() { mapper.take_released(); }
};

// A Python object as an engine pin. Pins are only ever destroyed with the GIL held: the
// engine hands them back instead of dropping them, and these bindings let the returned
// vectors go out of scope only after re-taking the GIL.
engine::Pin to_pin(const py::object& obj) {
  if (obj.is_none()) return {};
  return engine::Pin(new py::object(obj), [](void* p) { delete static_cast<py::object*>(p); });
}

std::uint64_t* out_ptr(U64Array& a) { return a.mutable_data(); }

}  // namespace

void bind_mapper(py::module_& m) {
  // A snapshot: it holds no pin (the mapping does), so keeping one keeps nothing alive.
  py::class_<engine::SegmentInfo>(m, "Segment")
      .def_readonly("iova", &engine::SegmentInfo::iova)
      .def_readonly("va", &engine::SegmentInfo::va)
      .def_readonly("length", &engine::SegmentInfo::length)
      .def_readonly("prot", &engine::SegmentInfo::prot)
      .def_readonly("run_iova", &engine::SegmentInfo::run_iova)
      .def_readonly("pinned", &engine::SegmentInfo::pinned)
      .def("__repr__", [](const engine::SegmentInfo& s) {
        return py::str("Segment(iova={:#x}, va={:#x}, length={:#x}, prot={}, pinned={})")
            .format(s.iova, s.va, s.length, s.prot, s.pinned);
      });

  py::class_<PyMapper>(m, "IoasMapper")
      .def(py::init<std::shared_ptr<Kernel>, int, std::uint32_t>(), py::arg("kernel"),
           py::arg("iommufd"), py::arg("ioas_id"))
      .def_property_readonly("ioas_id", [](const PyMapper& p) { return p.mapper.ioas_id(); })
      .def("map", [](PyMapper& p, const U64Array& vas, const U64Array& lengths,
                     const std::optional<U64Array>& iovas, std::uint32_t prot, bool coalesce,
                     unsigned threads, bool dense, std::uint64_t align,
                     const std::optional<std::vector<py::object>>& keep) {
        U64Array out(vas.size());
        std::vector<engine::Pin> pins;  // the engine takes them on success; else freed here
        if (keep) {
          pins.reserve(keep->size());
          for (const py::object& o : *keep) pins.push_back(to_pin(o));
        }
        std::span<std::uint64_t> out_view{out_ptr(out), static_cast<std::size_t>(out.size())};
        std::span<const std::uint64_t> fixed;
        if (iovas) fixed = view(*iovas);
        engine::BatchError err;
        {
          py::gil_scoped_release nogil;
          err = p.mapper.map(view(vas), view(lengths), fixed, out_view, prot,
                             engine::BatchOptions{coalesce, threads, dense, align}, pins);
        }
        return std::make_tuple(out, to_tuple(err));
      }, py::arg("vas"), py::arg("lengths"), py::arg("iovas"), py::arg("prot"),
         py::arg("coalesce") = false, py::arg("threads") = 1u, py::arg("dense") = false,
         py::arg("align") = 1u, py::arg("keep") = py::none(),
         "`keep`: None or one object per entry, held by its mapping until it is unmapped. "
         "-> (iovas, None | (errno, index, call, rollback_failed))")
      .def("map_one", [](PyMapper& p, std::uint64_t va, std::uint64_t length,
                         std::optional<std::uint64_t> iova, std::uint32_t prot,
                         const py::object& pin) {
        std::uint64_t out = 0;
        engine::Pin held = to_pin(pin);
        engine::BatchError err;
        {
          py::gil_scoped_release nogil;
          std::span<const std::uint64_t> fixed;
          if (iova) fixed = {&*iova, 1};
          err = p.mapper.map({&va, 1}, {&length, 1}, fixed, {&out, 1}, prot, {}, {&held, 1});
        }
        return std::make_tuple(out, to_tuple(err));
      }, py::arg("va"), py::arg("length"), py::arg("iova"), py::arg("prot"),
         py::arg("pin") = py::none(),
         "One mapping; the mapping keeps `pin` alive until it is unmapped: "
         "-> (iova, None | (errno, 0, call, rollback_failed))")
      .def("unmap", [](PyMapper& p, const U64Array& iovas, const U64Array& lengths) {
        engine::BatchError err;
        std::vector<engine::Pin> released;  // destroyed below, with the GIL
        std::uint64_t removed = 0;
        {
          py::gil_scoped_release nogil;
          released = p.mapper.take_released();
          err = p.mapper.unmap(view(iovas), view(lengths), &released, &removed);
        }
        return std::make_tuple(removed, to_tuple(err));
      }, py::arg("iovas"), py::arg("lengths"),
         "-> (bytes unmapped, None | (errno, index, call, rollback_failed))")
      .def("copy_from", [](PyMapper& p, const PyMapper& src, std::uint64_t src_iova,
                           std::uint64_t length, std::optional<std::uint64_t> iova,
                           std::uint32_t prot) {
        std::uint64_t out = iova.value_or(0);
        int err;
        {
          py::gil_scoped_release nogil;
          err = p.mapper.copy_from(src.mapper, src_iova, length, &out, iova.has_value(), prot);
        }
        return std::make_pair(err, out);
      }, py::arg("src"), py::arg("src_iova"), py::arg("length"), py::arg("iova"),
         py::arg("prot"), "-> (errno or 0, iova)")
      .def("map_file", [](PyMapper& p, int file_fd, std::uint64_t offset, std::uint64_t length,
                          std::optional<std::uint64_t> iova, std::uint32_t prot) {
        std::uint64_t out = iova.value_or(0);
        int err;
        {
          py::gil_scoped_release nogil;
          err = p.mapper.map_file(file_fd, offset, length, &out, iova.has_value(), prot);
        }
        return std::make_pair(err, out);
      }, py::arg("fd"), py::arg("offset"), py::arg("length"), py::arg("iova"), py::arg("prot"),
         "-> (errno or 0, iova)")
      .def("unmap_all", [](PyMapper& p) {
        std::uint64_t bytes = 0;
        std::vector<engine::Pin> released;  // destroyed below, with the GIL
        int rc;
        {
          py::gil_scoped_release nogil;
          released = p.mapper.take_released();
          rc = p.mapper.unmap_all(&bytes, &released);
        }
        return std::make_tuple(rc, bytes);
      }, "-> (0 or -errno, bytes unmapped)")
      .def("forget_all", [](PyMapper& p) {
        std::vector<engine::Pin> released;  // destroyed below, with the GIL
        {
          py::gil_scoped_release nogil;
          p.mapper.forget_all(&released);
          for (engine::Pin& pin : p.mapper.take_released()) released.push_back(std::move(pin));
        }
      }, "The IOAS is gone from the kernel: drop the table, release every pin")
      .def("enable_allocator", [](PyMapper& p, const std::vector<engine::IovaRange>& usable) {
        py::gil_scoped_release nogil;
        return p.mapper.enable_allocator(usable);
      }, py::arg("usable"), "-> 0 or -errno")
      .def_property_readonly("has_allocator", [](const PyMapper& p) {
        py::gil_scoped_release nogil;
        return p.mapper.has_allocator();
      })
      .def("allocations", [](const PyMapper& p) {
        py::gil_scoped_release nogil;
        return p.mapper.allocations();
      }, "-> [(start, last)] of the allocator's allocations")
      .def("__len__", [](const PyMapper& p) {
        py::gil_scoped_release nogil;
        return p.mapper.segment_count();
      })
      .def_property_readonly("pin_count", [](const PyMapper& p) {
        py::gil_scoped_release nogil;
        return p.mapper.pin_count();
      })
      .def("segments", [](const PyMapper& p) {
        std::vector<engine::SegmentInfo> segs;
        {
          py::gil_scoped_release nogil;
          segs = p.mapper.segments();
        }
        return segs;
      })
      .def("translate_iova", [](const PyMapper& p, std::uint64_t iova) -> std::optional<std::uint64_t> {
        std::uint64_t va = 0;
        bool ok;
        {
          py::gil_scoped_release nogil;
          ok = p.mapper.translate_iova(iova, &va);
        }
        if (!ok) return std::nullopt;
        return va;
      }, py::arg("iova"))
      .def("translate_va", [](const PyMapper& p, std::uint64_t va) -> std::optional<std::uint64_t> {
        std::uint64_t iova = 0;
        bool ok;
        {
          py::gil_scoped_release nogil;
          ok = p.mapper.translate_va(va, &iova);
        }
        if (!ok) return std::nullopt;
        return iova;
      }, py::arg("va"))
      .def("translate_va_bulk", [](const PyMapper& p, const U64Array& vas) {
        const auto n = static_cast<std::size_t>(vas.size());
        U64Array out(vas.size());
        py::array_t<bool> found(vas.size());
        std::span<std::uint64_t> dst{out.mutable_data(), n};
        std::span<std::uint8_t> hit{reinterpret_cast<std::uint8_t*>(found.mutable_data()), n};
        {
          py::gil_scoped_release nogil;
          p.mapper.translate_va_bulk(view(vas), dst, hit);
        }
        return std::make_pair(out, found);
      }, py::arg("vas"), "-> (iovas, found)")
      .def("translate_iova_bulk", [](const PyMapper& p, const U64Array& iovas) {
        const auto n = static_cast<std::size_t>(iovas.size());
        U64Array out(iovas.size());
        py::array_t<bool> found(iovas.size());
        std::span<std::uint64_t> dst{out.mutable_data(), n};
        std::span<std::uint8_t> hit{reinterpret_cast<std::uint8_t*>(found.mutable_data()), n};
        {
          py::gil_scoped_release nogil;
          p.mapper.translate_iova_bulk(view(iovas), dst, hit);
        }
        return std::make_pair(out, found);
      }, py::arg("iovas"), "-> (vas, found)")
      .def("capsule", [](PyMapper& p) {
        return py::capsule(static_cast<void*>(&p.mapper), FASTMAP_MAPPER_CAPSULE);
      }, "The mapper for the C API (fastmap_capi.h); valid while this object lives");

  m.attr("_C_API") = py::capsule(const_cast<fastmap_capi*>(engine::c_api()), FASTMAP_CAPI_CAPSULE);

  m.def("map_loop", [](const std::shared_ptr<Kernel>& k, int fd, std::uint32_t ioas,
                       const U64Array& vas, const U64Array& lengths, const U64Array& iovas,
                       std::uint32_t prot) {
    py::gil_scoped_release nogil;
    return engine::map_loop(*k, fd, ioas, view(vas), view(lengths), view(iovas), prot);
  }, py::arg("kernel"), py::arg("iommufd"), py::arg("ioas_id"), py::arg("vas"),
     py::arg("lengths"), py::arg("iovas"), py::arg("prot"),
     "The benchmark floor: a bare C++ loop of fixed-IOVA IOMMU_IOAS_MAP; 0 or -errno");
  m.def("unmap_loop", [](const std::shared_ptr<Kernel>& k, int fd, std::uint32_t ioas,
                         const U64Array& iovas, const U64Array& lengths) {
    py::gil_scoped_release nogil;
    return engine::unmap_loop(*k, fd, ioas, view(iovas), view(lengths));
  }, py::arg("kernel"), py::arg("iommufd"), py::arg("ioas_id"), py::arg("iovas"),
     py::arg("lengths"));
}

}  // namespace fastmap::bindings
