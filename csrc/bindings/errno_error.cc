// ErrnoError's registration: the one place a core -errno becomes a Python exception.
#include "bindings/errno_error.h"

#include <pybind11/pybind11.h>

#include "bindings/bindings.h"

namespace py = pybind11;

namespace fastmap::bindings {

long check(long rc, const std::string& call) {
  if (rc < 0) throw ErrnoError(static_cast<int>(-rc), call);
  return rc;
}

void bind_errors(py::module_& m) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const ErrnoError& e) {
      // Imported at raise time: fastmap.errors imports the package, which imports _core.
      try {
        py::object exc = py::module_::import("fastmap.errors")
                             .attr("KernelError")
                             .attr("from_errno")(e.errno_value(), e.call());
        PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
      } catch (py::error_already_set& err) {
        err.restore();
      }
    }
  });
  static_cast<void>(m);
}

}  // namespace fastmap::bindings
