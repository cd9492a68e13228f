// The simulated kernel's Python face: construction with its config, the machine's PCI
// devices and sysfs view, and the IOMMU models and domains for tests and benchmarks.
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bindings/bindings.h"
#include "bindings/cbuffer.h"
#include "bindings/errno_error.h"
#include "sim/core/mmio_trap.h"
#include "sim/iommu/domain.h"
#include "sim/iommu/domain_report.h"
#include "sim/iommu/iommu_model.h"
#include "sim/iommu/model_names.h"
#include "sim/sim_chardev.h"
#include "sim/sim_kernel.h"
#include "sim/vfio/dma_writer.h"
#include "sim/vfio/machine.h"
#include "sim/vfio/machine_report.h"

namespace py = pybind11;

namespace fastmap::bindings {

namespace {

py::dict device_dict(const sim::vfio::PciDeviceInfo& i) {
  py::dict d;
  d["bdf"] = i.bdf;
  d["index"] = i.index;
  d["cdev"] = i.cdev;
  d["group"] = i.group;
  d["group_path"] = i.group_path;
  d["sysfs"] = i.sysfs;
  return d;
}

void bind_iommu(py::module_& m) {
  py::class_<sim::IommuModel>(m, "IommuModel")
      .def_static("vtd", &sim::IommuModel::vtd, py::arg("dirty_tracking") = false)
      .def_static("mock", &sim::IommuModel::mock, py::arg("dirty_tracking") = true)
      .def_property_readonly("kind", [](const sim::IommuModel& im) { return sim::kind_name(im.kind); })
      .def_readonly("aperture_start", &sim::IommuModel::aperture_start)
      .def_readonly("aperture_last", &sim::IommuModel::aperture_last)
      .def_readonly("pgsize_bitmap", &sim::IommuModel::pgsize_bitmap)
      .def_readonly("dirty_tracking", &sim::IommuModel::dirty_tracking)
      .def_readonly("enforce_cache_coherency", &sim::IommuModel::enforce_cache_coherency)
      .def_readonly("hw_info_type", &sim::IommuModel::hw_info_type)
      .def_property_readonly("reserved", [](const sim::IommuModel& im) {
        std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
        for (const auto& r : im.reserved) out.emplace_back(r.start, r.last);
        return out;
      })
      .def_property_readonly("hw_info", [](const sim::IommuModel& im) {
        return py::bytes(reinterpret_cast<const char*>(im.hw_info.data()), im.hw_info.size());
      });

  // A standalone IOMMU domain: map process memory and let "the device" read and write it.
  py::class_<sim::Domain, std::shared_ptr<sim::Domain>>(m, "SimDomain")
      .def(py::init([](const sim::IommuModel& model, std::optional<bool> dirty_capable) {
             return std::make_shared<sim::Domain>(model, dirty_capable.value_or(model.dirty_tracking));
           }),
           py::arg("model"), py::arg("dirty_capable") = py::none())
      .def_property_readonly("min_page_size", &sim::Domain::min_page_size)
      .def_property_readonly("dirty_capable", &sim::Domain::dirty_capable)
      .def_property_readonly("dirty_tracking", &sim::Domain::dirty_tracking)
      .def_property_readonly("mapped_bytes", &sim::Domain::mapped_bytes)
      .def_property_readonly("iopte_count", &sim::Domain::iopte_count)
      .def_property_readonly("run_count", &sim::Domain::run_count)
      .def("map", [](sim::Domain& d, std::uint64_t iova, std::uint64_t va, std::uint64_t length,
                     int prot, bool largest_pages) {
        py::gil_scoped_release nogil;
        return d.map(iova, va, length, prot, largest_pages);
      }, py::arg("iova"), py::arg("va"), py::arg("length"), py::arg("prot") = 3,
         py::arg("largest_pages") = true)
      .def("unmap", [](sim::Domain& d, std::uint64_t iova, std::uint64_t length) {
        py::gil_scoped_release nogil;
        return d.unmap(iova, length);
      }, py::arg("iova"), py::arg("length"))
      .def("dma_read", [](sim::Domain& d, std::uint64_t iova, std::size_t length) {
        std::string buf(length, '\0');
        int rc;
        {
          py::gil_scoped_release nogil;
          rc = d.dma_read(iova, buf.data(), length);
        }
        return py::make_tuple(rc, py::bytes(buf));
      }, py::arg("iova"), py::arg("length"))
      .def("dma_write", [](sim::Domain& d, std::uint64_t iova, const py::object& data) {
        CBuffer buf(data, /*writable=*/false, "dma_write data");
        const void* p = buf.data();
        const std::size_t n = buf.size();
        py::gil_scoped_release nogil;
        return d.dma_write(iova, p, n);
      }, py::arg("iova"), py::arg("data"))
      .def("translate", &sim::Domain::translate, py::arg("iova"), py::arg("prot") = 0)
      .def("iopte_size", &sim::Domain::iopte_size, py::arg("iova"))
      .def("set_dirty_tracking", &sim::Domain::set_dirty_tracking, py::arg("enable"))
      .def("mark_dirty", &sim::Domain::mark_dirty, py::arg("iova"))
      .def("read_and_clear_dirty", [](sim::Domain& d, std::uint64_t iova, std::uint64_t length,
                                      bool no_clear) {
        std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
        {
          py::gil_scoped_release nogil;
          d.read_and_clear_dirty(iova, length, no_clear,
                                 [&](std::uint64_t a, std::uint64_t b) { out.emplace_back(a, b); });
        }
        return out;
      }, py::arg("iova"), py::arg("length"), py::arg("no_clear") = false,
         "[(first_iova, last_iova)] of dirty IOPTEs, adjacent ones merged")
      .def("count_dirty", [](sim::Domain& d, std::uint64_t iova, std::uint64_t length,
                             std::uint64_t page_size, bool no_clear) {
        py::gil_scoped_release nogil;
        return sim::count_dirty_pages(d, iova, length, page_size, no_clear);
      }, py::arg("iova"), py::arg("length"), py::arg("page_size"), py::arg("no_clear") = false,
         "Pages of page_size reported dirty: the harvest without building Python objects")
      .def("take_faults", [](sim::Domain& d) {
        std::vector<py::tuple> out;
        for (const sim::DmaFault& f : sim::take_all_faults(d)) {
          out.push_back(py::make_tuple(f.iova, f.write, f.error));
        }
        return out;
      }, "[(iova, write, -errno)] oldest first; empties the log");
}

py::dict writer_stats(const sim::vfio::DmaWriterStats& st) {
  py::dict d;
  d["pages"] = st.pages;
  d["faults"] = st.faults;
  d["bytes"] = st.bytes;
  return d;
}

void bind_dma_writer(py::module_& m) {
  using sim::vfio::DmaWriter;
  py::class_<DmaWriter>(m, "SimDmaWriter")
      .def("start", [](DmaWriter& w, double rate) {
        check(w.start(rate), "SimDmaWriter.start");
      }, py::arg("pages_per_second"))
      .def("set_rate", [](DmaWriter& w, double rate) {
        check(w.set_rate(rate), "SimDmaWriter.set_rate");
      }, py::arg("pages_per_second"))
      .def("stop", [](DmaWriter& w) {
        sim::vfio::DmaWriterStats st;
        {
          py::gil_scoped_release nogil;
          st = w.stop();
        }
        return writer_stats(st);
      }, "Stop and join the writer thread; returns the stats")
      .def_property_readonly("stats", [](const DmaWriter& w) { return writer_stats(w.stats()); })
      .def_property_readonly("running", &DmaWriter::running)
      .def_property_readonly("total_pages", &DmaWriter::total_pages);
}

void bind_machine(py::module_& m) {
  using sim::vfio::Machine;
  py::class_<Machine>(m, "SimMachine")
      .def("add_pci_device", [](Machine& mc, const std::string& bdf, std::uint16_t vendor,
                                std::uint16_t device, std::optional<int> group,
                                const std::string& iommu, bool dirty, const std::string& kind) {
        sim::vfio::PciDeviceSpec spec;
        spec.bdf = bdf;
        spec.vendor = vendor;
        spec.device = device;
        spec.group = group.value_or(-1);
        check(sim::model_named(iommu, dirty, &spec.iommu), "SimMachine.add_pci_device(iommu)");
        spec.kind = kind;
        sim::vfio::PciDeviceInfo info;
        check(mc.add_pci_device(spec, &info), "SimMachine.add_pci_device");
        return device_dict(info);
      }, py::arg("bdf") = "", py::arg("vendor") = 0x1234, py::arg("device") = 0x11e8,
         py::arg("group") = py::none(), py::arg("iommu") = "vtd", py::arg("dirty") = false,
         py::arg("kind") = "edu",
         "Plug in a device bound to vfio-pci: {bdf, index, cdev, group, group_path, sysfs}")
      .def("devices", [](Machine& mc) {
        py::list out;
        for (const auto& i : mc.devices()) out.append(device_dict(i));
        return out;
      })
      .def("list_dir", [](Machine& mc, const std::string& path) {
        std::vector<std::string> out;
        check(mc.list_dir(path, &out), path);
        return out;
      }, py::arg("path"))
      .def("read_file", [](Machine& mc, const std::string& path) {
        std::string out;
        check(mc.read_file(path, &out), path);
        return out;
      }, py::arg("path"))
      .def("read_link", [](Machine& mc, const std::string& path) {
        std::string out;
        check(mc.read_link(path, &out), path);
        return out;
      }, py::arg("path"))
      .def("dma_faults", [](Machine& mc, const std::string& bdf, bool clear) {
        std::vector<sim::vfio::DeviceDmaFault> faults;
        check(sim::vfio::device_faults(mc, bdf, clear, &faults), bdf);
        py::list out;
        for (const auto& f : faults) {
          py::dict d;
          d["addr"] = f.addr;
          d["len"] = f.len;
          d["write"] = f.write;
          d["error"] = f.error;
          out.append(d);
        }
        return out;
      }, py::arg("bdf"), py::arg("clear") = false,
         "The device's failed DMAs, oldest first: [{addr, len, write, error (-errno)}]")
      .def("pci_command", [](Machine& mc, const std::string& bdf) {
        std::uint16_t command = 0;
        check(sim::vfio::pci_command(mc, bdf, &command), bdf);
        return command;
      }, py::arg("bdf"))
      .def("edu_buffer", [](Machine& mc, const std::string& bdf) {
        std::vector<std::uint8_t> buf;
        check(sim::vfio::edu_buffer(mc, bdf, &buf), bdf);
        return py::bytes(reinterpret_cast<const char*>(buf.data()), buf.size());
      }, py::arg("bdf"), "The edu device's 4 KiB DMA buffer")
      .def("dma_writer", [](Machine& mc, const std::string& bdf,
                            const std::vector<std::pair<std::uint64_t, std::uint64_t>>& ranges,
                            std::uint64_t page_size, std::optional<std::uint64_t> write_size,
                            std::uint64_t seed) {
        std::vector<sim::vfio::DmaWriter::Range> rs;
        for (const auto& [iova, length] : ranges) rs.push_back({iova, length});
        std::shared_ptr<sim::vfio::PciDevice> dev;
        check(sim::vfio::find_pci_device(mc, bdf, &dev), bdf);
        std::unique_ptr<sim::vfio::DmaWriter> w;
        check(sim::vfio::DmaWriter::create(dev, std::move(rs), page_size,
                                           write_size.value_or(page_size), seed, &w),
              "SimMachine.dma_writer");
        return w;
      }, py::arg("bdf"), py::arg("ranges"), py::arg("page_size") = 4096,
         py::arg("write_size") = py::none(), py::arg("seed") = 0,
         "A stopped background writer: the device DMA-writes random pages of [(iova, length)]");
}

}  // namespace

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

  bind_iommu(m);
  bind_dma_writer(m);
  bind_machine(m);

  py::class_<sim::SimKernel, Kernel, std::shared_ptr<sim::SimKernel>>(m, "SimKernel")
      .def(py::init<sim::SimConfig>(), py::arg("config") = sim::SimConfig{})
      .def_property_readonly("config", &sim::SimKernel::config)
      .def_property_readonly("machine", &sim::SimKernel::machine,
                             py::return_value_policy::reference_internal)
      .def("mmap", &sim::SimKernel::mmap_anywhere, py::arg("fd"), py::arg("length"),
           py::arg("prot"), py::arg("flags"), py::arg("offset"),
           "mmap(2) of a simulated file: the address, or -errno")
      .def("munmap", [](sim::SimKernel&, std::uintptr_t addr, std::size_t length) {
        return sim::mmio_unmap(reinterpret_cast<void*>(addr), length);
      }, py::arg("addr"), py::arg("length"), "munmap(2) of a simulated mapping: 0 or -errno")
      .def("read", [](sim::SimKernel& k, int fd, std::size_t count) -> py::object {
        std::string buf(count, '\0');
        ssize_t n;
        {
          py::gil_scoped_release nogil;
          n = k.read(fd, buf.data(), count);
        }
        if (n < 0) return py::int_(n);
        return py::bytes(buf.data(), static_cast<std::size_t>(n));
      }, py::arg("fd"), py::arg("count"), "read(2) of a simulated file: bytes, or -errno")
      .def("write", [](sim::SimKernel& k, int fd, const py::bytes& data) {
        std::string buf = data;
        py::gil_scoped_release nogil;
        return k.write(fd, buf.data(), buf.size());
      }, py::arg("fd"), py::arg("data"), "write(2) of a simulated file: bytes written, or -errno")
      .def("chardev_of", [](const sim::SimKernel& k, int fd) {
        std::optional<std::pair<unsigned, unsigned>> devt;
        check(sim::chardev_of(k, fd, &devt), "fstat");
        return devt;
      }, py::arg("fd"), "(major, minor) of the char device behind fd, or None");
}

}  // namespace fastmap::bindings
