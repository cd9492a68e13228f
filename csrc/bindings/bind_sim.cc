// The simulated kernel's Python face: construction with its config, and the machine.
#include "bindings/bindings.h"

namespace py = pybind11;

namespace fastmap::bindings {

void bind_sim(py::module_& /*m*/) {}

}  // namespace fastmap::bindings
