// The batch mapping engine: numpy arrays in, numpy arrays and a BatchError tuple out.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <tuple>

#include "bindings/bindings.h"
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
};

}  // namespace

void bind_mapper(py::module_& m) {
  py::class_<engine::Segment>(m, "Segment")
      .def_readonly("iova", &engine::Segment::iova)
      .def_readonly("va", &engine::Segment::va)
      .def_readonly("length", &engine::Segment::length)
      .def_readonly("prot", &engine::Segment::prot)
      .def_readonly("run_iova", &engine::Segment::run_iova);

  py::class_<PyMapper>(m, "IoasMapper")
      .def(py::init<std::shared_ptr<Kernel>, int, std::uint32_t>(), py::arg("kernel"),
           py::arg("iommufd"), py::arg("ioas_id"))
      .def_property_readonly("ioas_id", [](const PyMapper& p) { return p.mapper.ioas_id(); })
      .def("map", [](PyMapper& p, const U64Array& vas, const U64Array& lengths,
                     const std::optional<U64Array>& iovas, std::uint32_t prot, bool coalesce,
                     unsigned threads) {
        U64Array out(vas.size());
        std::span<std::uint64_t> out_view{out.mutable_data(), static_cast<std::size_t>(out.size())};
        std::span<const std::uint64_t> fixed = iovas ? view(*iovas) : std::span<const std::uint64_t>{};
        engine::BatchError err;
        {
          py::gil_scoped_release nogil;
          err = p.mapper.map(view(vas), view(lengths), fixed, out_view, prot,
                             engine::BatchOptions{coalesce, threads});
        }
        return std::make_tuple(out, to_tuple(err));
      }, py::arg("vas"), py::arg("lengths"), py::arg("iovas"), py::arg("prot"),
         py::arg("coalesce") = false, py::arg("threads") = 1u,
         "-> (iovas, None | (errno, index, call, rollback_failed))")
      .def("map_one", [](PyMapper& p, std::uint64_t va, std::uint64_t length,
                         std::optional<std::uint64_t> iova, std::uint32_t prot) {
        std::uint64_t out = 0;
        engine::BatchError err;
        {
          py::gil_scoped_release nogil;
          std::span<const std::uint64_t> fixed;
          if (iova) fixed = {&*iova, 1};
          err = p.mapper.map({&va, 1}, {&length, 1}, fixed, {&out, 1}, prot, {});
        }
        return std::make_tuple(out, to_tuple(err));
      }, py::arg("va"), py::arg("length"), py::arg("iova"), py::arg("prot"),
         "One mapping without numpy: -> (iova, None | (errno, 0, call, rollback_failed))")
      .def("unmap", [](PyMapper& p, const U64Array& iovas, const U64Array& lengths) {
        engine::BatchError err;
        std::vector<std::uint64_t> removed;
        {
          py::gil_scoped_release nogil;
          err = p.mapper.unmap(view(iovas), view(lengths), &removed);
        }
        return std::make_tuple(U64Array(static_cast<py::ssize_t>(removed.size()), removed.data()),
                               to_tuple(err));
      }, py::arg("iovas"), py::arg("lengths"),
         "-> (removed segment iovas, None | (errno, index, call, rollback_failed))")
      .def("adopt", [](PyMapper& p, std::uint64_t iova, std::uint64_t length, std::uint32_t prot) {
        p.mapper.adopt(iova, length, prot);
      }, py::arg("iova"), py::arg("length"), py::arg("prot"))
      .def("unmap_all", [](PyMapper& p) {
        std::uint64_t bytes = 0;
        int rc;
        {
          py::gil_scoped_release nogil;
          rc = p.mapper.unmap_all(&bytes);
        }
        return std::make_tuple(rc, bytes);
      }, "-> (0 or -errno, bytes unmapped)")
      .def("__len__", [](const PyMapper& p) { return p.mapper.segment_count(); })
      .def("segments", [](const PyMapper& p) { return p.mapper.segments(); })
      .def("translate_iova", [](const PyMapper& p, std::uint64_t iova) -> std::optional<std::uint64_t> {
        std::uint64_t va = 0;
        if (!p.mapper.translate_iova(iova, &va)) return std::nullopt;
        return va;
      }, py::arg("iova"))
      .def("translate_va", [](const PyMapper& p, std::uint64_t va) -> std::optional<std::uint64_t> {
        std::uint64_t iova = 0;
        if (!p.mapper.translate_va(va, &iova)) return std::nullopt;
        return iova;
      }, py::arg("va"))
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
