// The ioctl seam. Calls return the kernel's result or -errno; fastmap.kernel turns that into
// typed exceptions. The GIL is released around every call into a kernel.
#include <cstdint>
#include <memory>
#include <string>
#include <variant>

#include "bindings/bindings.h"
#include "seam/real_kernel.h"

namespace py = pybind11;

namespace fastmap::bindings {

namespace {

// An ioctl argument: a writable buffer (the struct, updated in place) or an integer passed
// by value.
long call_ioctl(Kernel& k, int fd, unsigned long request, const py::object& arg) {
  if (arg.is_none()) {
    py::gil_scoped_release nogil;
    return k.ioctl(fd, request, nullptr);
  }
  if (py::isinstance<py::int_>(arg)) {
    auto value = arg.cast<std::uintptr_t>();
    py::gil_scoped_release nogil;
    return k.ioctl(fd, request, reinterpret_cast<void*>(value));
  }
  py::buffer_info info = py::reinterpret_borrow<py::buffer>(arg).request(/*writable=*/true);
  void* p = info.ptr;
  py::gil_scoped_release nogil;
  return k.ioctl(fd, request, p);
}

}  // namespace

void bind_seam(py::module_& m) {
  py::class_<Kernel, std::shared_ptr<Kernel>>(m, "Kernel")
      .def_property_readonly("name", &Kernel::name)
      .def("open", [](Kernel& k, const std::string& path, int flags) {
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
      .def("pwrite", [](Kernel& k, int fd, const py::buffer& data, std::uint64_t offset) {
        py::buffer_info info = data.request();
        const void* p = info.ptr;
        auto n = static_cast<std::size_t>(info.size * info.itemsize);
        py::gil_scoped_release nogil;
        return k.pwrite(fd, p, n, offset);
      }, py::arg("fd"), py::arg("data"), py::arg("offset"));

  py::class_<RealKernel, Kernel, std::shared_ptr<RealKernel>>(m, "RealKernel")
      .def(py::init<>());
}

}  // namespace fastmap::bindings
