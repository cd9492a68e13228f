// The simulated kernel's Python face: construction with its config.
#include <memory>

#include "bindings/bindings.h"
#include "sim/sim_kernel.h"

namespace py = pybind11;

namespace fastmap::bindings {

void bind_sim(py::module_& m) {
  py::class_<sim::SimConfig>(m, "SimConfig")
      .def(py::init<>())
      .def_readwrite("kernel_version", &sim::SimConfig::kernel_version)
      .def_readwrite("transparent_hugepage", &sim::SimConfig::transparent_hugepage)
      .def_readwrite("iommufd_test", &sim::SimConfig::iommufd_test)
      .def_readwrite("dma_entry_limit", &sim::SimConfig::dma_entry_limit)
      .def_readwrite("cap_sys_resource", &sim::SimConfig::cap_sys_resource)
      .def_readwrite("cap_ipc_lock", &sim::SimConfig::cap_ipc_lock)
      .def_readwrite("rlimit_memlock", &sim::SimConfig::rlimit_memlock);

  py::class_<sim::SimKernel, Kernel, std::shared_ptr<sim::SimKernel>>(m, "SimKernel")
      .def(py::init<sim::SimConfig>(), py::arg("config") = sim::SimConfig{})
      .def_property_readonly("config", &sim::SimKernel::config);
}

}  // namespace fastmap::bindings
