// The ioctl seam. Calls return the kernel's result or -errno; fastmap.kernel turns that into
// typed exceptions. The GIL is released around every call into a kernel.
#include <Python.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <set>
#include <string>

#include "bindings/bindings.h"
#include "bindings/cbuffer.h"
#include "seam/fault_kernel.h"
#include "seam/real_kernel.h"
#include "uapi/size_header.h"
#include "uapi/vfio.h"

namespace py = pybind11;

namespace fastmap::bindings {

namespace {

// An integer from Python in [0, 2**64): a ValueError naming it otherwise (not pybind11's
// "incompatible function arguments", not truncation).
std::uint64_t u64_arg(const py::handle& value, const char* what) {
  if (!PyLong_Check(value.ptr()) || PyBool_Check(value.ptr())) {
    throw py::type_error(std::string(what) + " must be an integer");
  }
  const unsigned long long v = PyLong_AsUnsignedLongLong(value.ptr());
  if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
    PyErr_Clear();
    throw py::value_error(std::string(what) + "=" + py::str(value).cast<std::string>() +
                          " is outside [0, 2**64)");
  }
  return v;
}

// An ioctl argument: a C-contiguous writable buffer (the struct, updated in place; at least
// as long as its size/argsz header says), an integer passed by value, or None.
long call_ioctl(Kernel& k, int fd, unsigned long request, const py::object& arg) {
  if (arg.is_none()) {
    py::gil_scoped_release nogil;
    return k.ioctl(fd, request, nullptr);
  }
  if (py::isinstance<py::int_>(arg)) {
    auto value = static_cast<std::uintptr_t>(u64_arg(arg, "ioctl arg"));
    py::gil_scoped_release nogil;
    return k.ioctl(fd, request, reinterpret_cast<void*>(value));
  }
  CBuffer buf(arg, /*writable=*/true, "ioctl arg");
  if (uapi::has_size_header(request)) {
    std::uint32_t size = 0;
    if (buf.size() < sizeof size) {
      throw py::value_error("ioctl arg of " + std::to_string(buf.size()) +
                            " bytes is too short for its size field");
    }
    std::memcpy(&size, buf.data(), sizeof size);
    if (size > buf.size()) {
      throw py::value_error("ioctl arg is " + std::to_string(buf.size()) +
                            " bytes but its size field says " + std::to_string(size));
    }
  }
  void* p = buf.data();
  py::gil_scoped_release nogil;
  return k.ioctl(fd, request, p);
}

}  // namespace

void bind_seam(py::module_& m) {
  py::class_<Kernel, std::shared_ptr<Kernel>>(m, "Kernel")
      .def_property_readonly("name", &Kernel::name)
      .def("open", [](Kernel& k, const std::string& path, int flags) {
        // The C string would end at the first NUL and open another file.
        if (path.find('\0') != std::string::npos) throw py::value_error("path contains a NUL byte");
        py::gil_scoped_release nogil;
        return k.open(path.c_str(), flags);
      }, py::arg("path"), py::arg("flags"))
      .def("close", [](Kernel& k, int fd) {
        py::gil_scoped_release nogil;
        return k.close(fd);
      }, py::arg("fd"))
      .def("ioctl", &call_ioctl, py::arg("fd"), py::arg("request"), py::arg("arg"))
      .def("pread", [](Kernel& k, int fd, std::size_t count, std::uint64_t offset) -> py::object {
        std::string buf(count, '\0');
        ssize_t n;
        {
          py::gil_scoped_release nogil;
          n = k.pread(fd, buf.data(), count, offset);
        }
        if (n < 0) return py::int_(n);
        return py::bytes(buf.data(), static_cast<std::size_t>(n));
      }, py::arg("fd"), py::arg("count"), py::arg("offset"))
      .def("pwrite", [](Kernel& k, int fd, const py::object& data, std::uint64_t offset) {
        CBuffer buf(data, /*writable=*/false, "pwrite data");
        const void* p = buf.data();
        const std::size_t n = buf.size();
        py::gil_scoped_release nogil;
        return k.pwrite(fd, p, n, offset);
      }, py::arg("fd"), py::arg("data"), py::arg("offset"));

  py::class_<RealKernel, Kernel, std::shared_ptr<RealKernel>>(m, "RealKernel")
      .def(py::init<>());

  py::class_<FaultKernel, Kernel, std::shared_ptr<FaultKernel>>(m, "FaultKernel")
      .def(py::init([](std::shared_ptr<Kernel> inner) {
             return std::make_shared<FaultKernel>(
                 std::move(inner), std::set<unsigned long>{uapi::VFIO_GROUP_GET_DEVICE_FD});
           }),
           py::arg("inner"))
      .def("fail_nth", &FaultKernel::fail_nth, py::arg("nth"), py::arg("errno"),
           "Fail the nth open/ioctl from now with -errno (0: none); resets the count")
      .def("spare", &FaultKernel::spare, py::arg("request"),
           "Never count (so never fail) this ioctl request")
      .def_property_readonly("calls", &FaultKernel::calls)
      .def_property_readonly("fired", &FaultKernel::fired)
      .def_property_readonly("open_fds", &FaultKernel::open_fds)
      .def_property_readonly("inner", &FaultKernel::inner);
}

}  // namespace fastmap::bindings
