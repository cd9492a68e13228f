// libfastmap_sim: the C ABI over sim::SimKernel. Conversions only; every entry point is
// noexcept and turns allocation failures into -ENOMEM, so no exception crosses the ABI.
#include "fastmap_sim.h"

#include <cerrno>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "sim/iommu/iommu_model.h"
#include "sim/sim_kernel.h"
#include "sim/core/fail_nth.h"
#include "sim/core/mmio_trap.h"
#include "sim/core/user_memory.h"
#include "sim/vfio/machine.h"

#define FASTMAP_SIM_EXPORT extern "C" __attribute__((visibility("default")))

struct fastmap_sim {
  std::unique_ptr<fastmap::sim::SimKernel> kernel;
};

namespace {

using fastmap::sim::SimKernel;

// Runs f, mapping C++ allocation failure (the only exception the core lets out of
// construction paths) to -ENOMEM.
template <class F>
auto guarded(F&& f) noexcept -> decltype(f()) {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  } catch (...) {
    return -EINVAL;
  }
}

void copy_str(char* dst, std::size_t size, const std::string& src) {
  std::size_t n = src.size() < size - 1 ? src.size() : size - 1;
  std::memcpy(dst, src.data(), n);
  dst[n] = '\0';
}

ssize_t copy_out(const std::string& s, char* buf, std::size_t size) {
  if (buf && size) std::memcpy(buf, s.data(), s.size() < size ? s.size() : size);
  return static_cast<ssize_t>(s.size());
}

}  // namespace

FASTMAP_SIM_EXPORT void fastmap_sim_config_init(struct fastmap_sim_config* cfg) {
  const fastmap::sim::SimConfig d;
  cfg->kernel_version = d.kernel_version;
  cfg->transparent_hugepage = d.transparent_hugepage;
  cfg->iommufd_test = d.iommufd_test;
  cfg->dma_entry_limit = d.dma_entry_limit;
  cfg->cap_sys_resource = d.cap_sys_resource;
  cfg->cap_ipc_lock = d.cap_ipc_lock;
  cfg->rlimit_memlock = d.rlimit_memlock;
}

FASTMAP_SIM_EXPORT int fastmap_sim_create(const struct fastmap_sim_config* cfg, fastmap_sim** out) {
  if (!out) return -EINVAL;
  *out = nullptr;
  fastmap::sim::SimConfig c;
  if (cfg) {
    c.kernel_version = cfg->kernel_version;
    c.transparent_hugepage = cfg->transparent_hugepage != 0;
    c.iommufd_test = cfg->iommufd_test != 0;
    c.dma_entry_limit = cfg->dma_entry_limit;
    c.cap_sys_resource = cfg->cap_sys_resource != 0;
    c.cap_ipc_lock = cfg->cap_ipc_lock != 0;
    c.rlimit_memlock = cfg->rlimit_memlock;
  }
  return guarded([&] {
    auto sim = std::make_unique<fastmap_sim>();
    sim->kernel = std::make_unique<SimKernel>(c);
    *out = sim.release();
    return 0;
  });
}

FASTMAP_SIM_EXPORT void fastmap_sim_destroy(fastmap_sim* sim) { delete sim; }

FASTMAP_SIM_EXPORT void fastmap_sim_pci_spec_init(struct fastmap_sim_pci_spec* spec) {
  std::memset(spec, 0, sizeof *spec);
  spec->group = -1;
}

FASTMAP_SIM_EXPORT int fastmap_sim_add_pci_device(fastmap_sim* sim,
                                                  const struct fastmap_sim_pci_spec* spec,
                                                  struct fastmap_sim_pci_info* info) {
  if (!sim || !spec) return -EINVAL;
  return guarded([&] {
    fastmap::sim::vfio::PciDeviceSpec s;
    if (spec->bdf) s.bdf = spec->bdf;
    if (spec->vendor) s.vendor = spec->vendor;
    if (spec->device) s.device = spec->device;
    s.group = spec->group;
    const std::string iommu = spec->iommu ? spec->iommu : "vtd";
    if (iommu == "vtd") {
      s.iommu = fastmap::sim::IommuModel::vtd(spec->dirty_tracking != 0);
    } else if (iommu == "mock") {
      s.iommu = fastmap::sim::IommuModel::mock(spec->dirty_tracking != 0);
    } else {
      return -EINVAL;
    }
    if (spec->kind) s.kind = spec->kind;
    fastmap::sim::vfio::PciDeviceInfo i;
    if (int rc = sim->kernel->machine().add_pci_device(s, &i)) return rc;
    if (info) {
      std::memset(info, 0, sizeof *info);
      copy_str(info->bdf, sizeof info->bdf, i.bdf);
      info->index = i.index;
      info->group = i.group;
      copy_str(info->cdev, sizeof info->cdev, i.cdev);
      copy_str(info->group_path, sizeof info->group_path, i.group_path);
      copy_str(info->sysfs, sizeof info->sysfs, i.sysfs);
    }
    return 0;
  });
}

FASTMAP_SIM_EXPORT int fastmap_sim_open(fastmap_sim* sim, const char* path, int flags) {
  return sim->kernel->open(path, flags);
}

FASTMAP_SIM_EXPORT int fastmap_sim_close(fastmap_sim* sim, int fd) {
  return sim->kernel->close(fd);
}

FASTMAP_SIM_EXPORT long fastmap_sim_ioctl(fastmap_sim* sim, int fd, unsigned long request,
                                          void* arg) {
  return sim->kernel->ioctl(fd, request, arg);
}

FASTMAP_SIM_EXPORT ssize_t fastmap_sim_read(fastmap_sim* sim, int fd, void* buf, size_t count) {
  return sim->kernel->read(fd, buf, count);
}

FASTMAP_SIM_EXPORT ssize_t fastmap_sim_write(fastmap_sim* sim, int fd, const void* buf,
                                             size_t count) {
  return sim->kernel->write(fd, buf, count);
}

FASTMAP_SIM_EXPORT ssize_t fastmap_sim_pread(fastmap_sim* sim, int fd, void* buf, size_t count,
                                             uint64_t offset) {
  return sim->kernel->pread(fd, buf, count, offset);
}

FASTMAP_SIM_EXPORT ssize_t fastmap_sim_pwrite(fastmap_sim* sim, int fd, const void* buf,
                                              size_t count, uint64_t offset) {
  return sim->kernel->pwrite(fd, buf, count, offset);
}

FASTMAP_SIM_EXPORT int fastmap_sim_mmap(fastmap_sim* sim, int fd, void* addr, size_t length,
                                        int prot, int flags, uint64_t offset, void** out) {
  return sim->kernel->mmap(fd, addr, length, prot, flags, offset, out);
}

FASTMAP_SIM_EXPORT int fastmap_sim_munmap(void* addr, size_t length) {
  if (!fastmap::sim::mmio_mapped(addr, length)) return 1;
  return fastmap::sim::mmio_unmap(addr, length);
}

FASTMAP_SIM_EXPORT int fastmap_sim_chardev(fastmap_sim* sim, int fd, unsigned* major,
                                           unsigned* minor) {
  return sim->kernel->chardev(fd, major, minor);
}

FASTMAP_SIM_EXPORT int fastmap_sim_dup_to(fastmap_sim* sim, int oldfd, int newfd) {
  return sim->kernel->dup_to(oldfd, newfd);
}

FASTMAP_SIM_EXPORT int fastmap_sim_is_node(fastmap_sim* sim, const char* path) {
  if (!path) return 0;
  return guarded([&] { return sim->kernel->has_node(path) ? 1 : 0; });
}

FASTMAP_SIM_EXPORT int fastmap_sim_node_chardev(fastmap_sim* sim, const char* path,
                                                unsigned* major, unsigned* minor) {
  if (!path) return -EFAULT;
  return guarded([&] { return sim->kernel->node_chardev(path, major, minor); });
}

FASTMAP_SIM_EXPORT ssize_t fastmap_sim_node_list(fastmap_sim* sim, char* buf, size_t size) {
  return guarded([&]() -> ssize_t {
    std::string joined;
    for (const auto& n : sim->kernel->node_names()) {
      joined += n;
      joined.push_back('\0');
    }
    return copy_out(joined, buf, size);
  });
}

FASTMAP_SIM_EXPORT ssize_t fastmap_sim_sysfs_read(fastmap_sim* sim, const char* path, char* buf,
                                                  size_t size) {
  if (!path) return -EFAULT;
  return guarded([&]() -> ssize_t {
    std::string out;
    if (int rc = sim->kernel->machine().read_file(path, &out)) return rc;
    return copy_out(out, buf, size);
  });
}

FASTMAP_SIM_EXPORT ssize_t fastmap_sim_sysfs_readlink(fastmap_sim* sim, const char* path,
                                                      char* buf, size_t size) {
  if (!path) return -EFAULT;
  return guarded([&]() -> ssize_t {
    std::string out;
    if (int rc = sim->kernel->machine().read_link(path, &out)) return rc;
    return copy_out(out, buf, size);
  });
}

FASTMAP_SIM_EXPORT ssize_t fastmap_sim_sysfs_list(fastmap_sim* sim, const char* path, char* buf,
                                                  size_t size) {
  if (!path) return -EFAULT;
  return guarded([&]() -> ssize_t {
    std::vector<std::string> names;
    if (int rc = sim->kernel->machine().list_dir(path, &names)) return rc;
    std::string joined;
    for (const auto& n : names) {
      joined += n;
      joined.push_back('\0');
    }
    return copy_out(joined, buf, size);
  });
}

FASTMAP_SIM_EXPORT ssize_t fastmap_sim_sysfs_realpath(fastmap_sim* sim, const char* path,
                                                      char* buf, size_t size) {
  if (!path) return -EFAULT;
  return guarded([&]() -> ssize_t {
    std::string out;
    if (int rc = sim->kernel->machine().sysfs_realpath(path, &out)) return rc;
    return copy_out(out, buf, size);
  });
}

FASTMAP_SIM_EXPORT int fastmap_sim_sysfs_type(fastmap_sim* sim, const char* path) {
  if (!path) return -EFAULT;
  return guarded([&] { return sim->kernel->machine().sysfs_type(path); });
}

FASTMAP_SIM_EXPORT void fastmap_sim_set_fd_allocator(fastmap_sim* sim, fastmap_sim_fd_alloc alloc,
                                                     fastmap_sim_fd_release release, void* ctx) {
  if (!alloc) {
    sim->kernel->set_fd_allocator(nullptr, nullptr);
    return;
  }
  try {
    sim->kernel->set_fd_allocator([alloc, ctx] { return alloc(ctx); },
                                  [release, ctx](int fd) {
                                    if (release) release(ctx, fd);
                                  });
  } catch (...) {
    // std::function of two pointers stays in its small buffer: nothing to allocate.
  }
}

FASTMAP_SIM_EXPORT int fastmap_sim_table_clone(fastmap_sim* sim, int table) {
  return sim->kernel->clone_table(table);
}

FASTMAP_SIM_EXPORT int fastmap_sim_table_drop(fastmap_sim* sim, int table) {
  return sim->kernel->drop_table(table);
}

FASTMAP_SIM_EXPORT void fastmap_sim_set_thread_task(int table, pid_t mm_pid) {
  SimKernel::set_thread_table(table);
  fastmap::sim::set_thread_remote_mm(mm_pid);
}

FASTMAP_SIM_EXPORT void fastmap_sim_fail_nth_set(unsigned n) { fastmap::sim::fail_nth_set(n); }

FASTMAP_SIM_EXPORT unsigned fastmap_sim_fail_nth_get(void) { return fastmap::sim::fail_nth_get(); }

FASTMAP_SIM_EXPORT unsigned long long fastmap_sim_fail_nth_injected(void) {
  return fastmap::sim::fail_nth_injected();
}
