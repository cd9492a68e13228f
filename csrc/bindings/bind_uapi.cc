// uAPI layouts and constants, as plain Python data for fastmap.uapi to build ctypes from.
#include <pybind11/stl.h>

#include "bindings/bindings.h"
#include "uapi/registry.h"

namespace py = pybind11;

namespace fastmap::bindings {

void bind_uapi(py::module_& m) {
  m.def("uapi_structs", [] {
    py::list out;
    for (const auto& s : uapi::all_structs()) {
      py::list fields;
      for (const auto& f : s.fields) {
        fields.append(py::make_tuple(f.name, f.offset, f.size, f.type, f.count));
      }
      out.append(py::make_tuple(s.name, s.size, s.is_union, fields));
    }
    return out;
  }, "[(name, size, is_union, [(field, offset, size, type, count)])] in dependency order");
  m.def("uapi_constants", [] {
    py::dict out;
    for (const auto& c : uapi::all_constants()) out[c.name] = c.value;
    return out;
  });
}

}  // namespace fastmap::bindings
