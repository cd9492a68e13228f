// BufferPin: holds a Python buffer export (PEP 3118) for as long as memory is mapped.
//
// While the export is held the exporter keeps its memory where it is: a bytearray refuses
// to resize, a numpy array stays alive after `del`, an mmap refuses to close. fastmap.ioas
// keeps one pin per mapped buffer and releases it only after the unmap succeeded, so memory
// a device can reach is never freed under it.
#include <Python.h>

#include <cstdint>

#include "bindings/bindings.h"

namespace py = pybind11;

namespace fastmap::bindings {

namespace {

class BufferPin {
 public:
  BufferPin(const py::object& obj, bool writable) {
    const int flags = PyBUF_ANY_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj.ptr(), &view_, flags)) throw py::error_already_set();
  }
  ~BufferPin() { release(); }
  BufferPin(const BufferPin&) = delete;
  BufferPin& operator=(const BufferPin&) = delete;

  // A released export reads as empty: no exporter, address 0, 0 bytes.
  void release() {
    if (view_.obj) PyBuffer_Release(&view_);
    view_ = Py_buffer{};
  }
  bool held() const { return view_.obj; }
  std::uintptr_t address() const { return reinterpret_cast<std::uintptr_t>(view_.buf); }
  Py_ssize_t nbytes() const { return view_.len; }
  bool readonly() const { return view_.readonly; }

 private:
  Py_buffer view_{};
};

}  // namespace

void bind_buffer(py::module_& m) {
  py::class_<BufferPin>(m, "BufferPin")
      .def(py::init<const py::object&, bool>(), py::arg("obj"), py::arg("writable"))
      .def_property_readonly("address", &BufferPin::address)
      .def_property_readonly("nbytes", &BufferPin::nbytes)
      .def_property_readonly("readonly", &BufferPin::readonly)
      .def_property_readonly("held", &BufferPin::held)
      .def("release", &BufferPin::release);
}

}  // namespace fastmap::bindings
