// CBuffer: a C-contiguous PEP 3118 export held for the duration of one call into a kernel.
#pragma once

#include <Python.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <string>

namespace fastmap::bindings {

// A PEP 3118 export of exactly `flags` (C-contiguous, writable if asked), held for the call.
// Anything else is a ValueError: a strided or reversed view would make the kernel read and
// write bytes the buffer does not own.
class CBuffer {
 public:
  CBuffer(const pybind11::object& obj, bool writable, const char* what) {
    const int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj.ptr(), &view_, flags)) {
      std::string why = "not a buffer";
      if (PyErr_Occurred()) {
        pybind11::error_already_set e;
        why = e.what();
      }
      throw pybind11::value_error(std::string(what) + " must be a C-contiguous" +
                            (writable ? " writable" : "") + " buffer (" + why + ")");
    }
  }
  ~CBuffer() { PyBuffer_Release(&view_); }
  CBuffer(const CBuffer&) = delete;
  CBuffer& operator=(const CBuffer&) = delete;

  void* data() const { return view_.buf; }
  std::size_t size() const { return static_cast<std::size_t>(view_.len); }

 private:
  Py_buffer view_{};
};

}  // namespace fastmap::bindings
