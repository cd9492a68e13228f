// fastmap._core: the private extension. Each bind_*.cc registers one layer; all logic lives
// in the C++ core or the Python package, never here.
#include "bindings/bindings.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastmap's C++ core (private; use the fastmap package)";
  fastmap::bindings::bind_errors(m);
  fastmap::bindings::bind_uapi(m);
  fastmap::bindings::bind_seam(m);
  fastmap::bindings::bind_sim(m);
  fastmap::bindings::bind_mapper(m);
  fastmap::bindings::bind_buffer(m);
  fastmap::bindings::bind_bitmap(m);
  fastmap::bindings::bind_engine(m);
}
