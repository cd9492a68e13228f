// One registration function per bound layer.
#pragma once

#include <pybind11/pybind11.h>

namespace fastmap::bindings {

void bind_errors(pybind11::module_& m);
void bind_uapi(pybind11::module_& m);
void bind_seam(pybind11::module_& m);
void bind_sim(pybind11::module_& m);
void bind_mapper(pybind11::module_& m);
void bind_buffer(pybind11::module_& m);
void bind_bitmap(pybind11::module_& m);
void bind_engine(pybind11::module_& m);

}  // namespace fastmap::bindings
