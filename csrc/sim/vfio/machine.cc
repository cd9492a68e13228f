#include "sim/vfio/machine.h"

#include <cctype>
#include <cerrno>
#include <cstdio>

#include "sim/core/kernel_core.h"
#include "sim/vfio/container.h"
#include "sim/vfio/device_file.h"
#include "sim/vfio/edu.h"
#include "sim/vfio/group.h"

namespace fastmap::sim::vfio {

namespace {

constexpr unsigned kFirstAutoSlot = 3;        // 00:00.0 host bridge, 00:01.0 VGA, 00:02.0 NIC
constexpr unsigned kMaxSlot = 0x1f;
constexpr std::uint32_t kBarBase = 0xf0000000;  // BAR0s in the 32-bit MMIO hole, 1 MiB apart

std::string hex(unsigned v, int width) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%0*x", width, v);
  return buf;
}

std::string device_dir(const std::string& bdf) { return "/sys/devices/pci0000:00/" + bdf; }

}  // namespace

Machine::Machine(KernelCore& kernel) : kernel_(kernel) {
  // What a host shows before any device is bound to vfio-pci.
  sysfs_.add_dir("/sys/bus/pci/devices");
  sysfs_.add_dir("/sys/bus/pci/drivers/vfio-pci");
  sysfs_.add_dir("/sys/kernel/iommu_groups");
  sysfs_.add_dir("/sys/class/iommu");
}

Machine::~Machine() = default;

bool Machine::parse_bdf(const std::string& given, std::string* canonical) {
  // DDDD:BB:SS.F, hexadecimal; slot <= 0x1f, function <= 7. lspci's (and QEMU's host=)
  // BB:SS.F means domain 0000, as fastmap.pci_address reads it.
  const std::string in = given.size() == 7 ? "0000:" + given : given;
  unsigned dom = 0, bus = 0, slot = 0, fn = 0;
  if (in.size() != 12 || in[4] != ':' || in[7] != ':' || in[10] != '.') return false;
  for (std::size_t i : {0u, 1u, 2u, 3u, 5u, 6u, 8u, 9u, 11u}) {
    if (!std::isxdigit(static_cast<unsigned char>(in[i]))) return false;
  }
  if (std::sscanf(in.c_str(), "%4x:%2x:%2x.%1x", &dom, &bus, &slot, &fn) != 4) return false;
  if (slot > kMaxSlot || fn > 7) return false;
  char buf[16];
  std::snprintf(buf, sizeof buf, "%04x:%02x:%02x.%x", dom, bus, slot, fn);
  *canonical = buf;
  return true;
}

std::string Machine::next_free_bdf() const {
  for (unsigned slot = kFirstAutoSlot; slot <= kMaxSlot; ++slot) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "0000:00:%02x.0", slot);
    bool used = false;
    for (const Entry& e : entries_) used = used || e.info.bdf == buf;
    if (!used) return buf;
  }
  return {};
}

int Machine::add_pci_device(const PciDeviceSpec& spec, PciDeviceInfo* out) {
  std::lock_guard<std::mutex> g(mu_);
  std::string bdf;
  if (spec.bdf.empty()) {
    bdf = next_free_bdf();
    if (bdf.empty()) return -ENOSPC;
  } else if (!parse_bdf(spec.bdf, &bdf)) {
    return -EINVAL;
  }
  for (const Entry& e : entries_) {
    if (e.info.bdf == bdf) return -EEXIST;
  }
  if (spec.kind != "edu") return -EINVAL;

  int group_id = spec.group;
  if (group_id < 0) {
    group_id = groups_.empty() ? 0 : groups_.rbegin()->first + 1;
  }
  auto git = groups_.find(group_id);
  if (git != groups_.end() && !git->second->devices.empty() &&
      git->second->devices.front()->pci->iommu().kind != spec.iommu.kind) {
    return -EINVAL;  // one group, one IOMMU
  }

  const unsigned index = static_cast<unsigned>(entries_.size());
  PciIds ids;
  ids.vendor = spec.vendor;
  ids.device = spec.device;
  auto dev = std::make_shared<VfioDevice>(std::make_shared<EduDevice>(
      bdf, spec.iommu, ids,
      kBarBase + index * static_cast<std::uint32_t>(EduDevice::kBar0Size)));
  dev->index = index;

  std::shared_ptr<VfioGroup> group;
  if (git == groups_.end()) {
    group = std::make_shared<VfioGroup>();
    group->id = group_id;
    groups_.emplace(group_id, group);
    kernel_.register_node("/dev/vfio/" + std::to_string(group_id),
                          [group](KernelCore& k, int, int* err) -> std::shared_ptr<File> {
                            return GroupFile::open(k, group, err);
                          });
  } else {
    group = git->second;
  }
  {
    std::lock_guard<std::mutex> gg(group->mu);
    group->devices.push_back(dev);
  }
  dev->group = group.get();

  Entry e;
  e.info.bdf = bdf;
  e.info.index = index;
  e.info.cdev = "/dev/vfio/devices/vfio" + std::to_string(index);
  e.info.group = group_id;
  e.info.group_path = "/dev/vfio/" + std::to_string(group_id);
  e.info.sysfs = "/sys/bus/pci/devices/" + bdf;
  e.dev = dev;
  kernel_.register_node(e.info.cdev, [dev](KernelCore& k, int, int*) -> std::shared_ptr<File> {
    return std::make_shared<VfioDeviceFile>(k, dev);
  });
  if (!container_node_) {
    kernel_.register_node("/dev/vfio/vfio", [](KernelCore& k, int, int*) -> std::shared_ptr<File> {
      return std::make_shared<ContainerFile>(std::make_shared<Container>(k));
    });
    container_node_ = true;
  }
  publish_sysfs(e);
  if (spec.iommu.kind == IommuModel::Kind::kVtd && !dmar_) {
    sysfs_.add_link("/sys/class/iommu/dmar0", "../../devices/virtual/iommu/dmar0");
    sysfs_.add_dir("/sys/devices/virtual/iommu/dmar0");
    dmar_ = true;
  }
  entries_.push_back(e);
  if (out) *out = e.info;
  return 0;
}

void Machine::publish_sysfs(const Entry& e) {
  const std::string& bdf = e.info.bdf;
  const std::string dir = device_dir(bdf);
  const PciIds& ids = e.dev->pci->ids();
  sysfs_.add_file(dir + "/vendor", hex(ids.vendor, 4) + "\n");
  sysfs_.add_file(dir + "/device", hex(ids.device, 4) + "\n");
  sysfs_.add_file(dir + "/class", hex(ids.class_code, 6) + "\n");
  sysfs_.add_file(dir + "/subsystem_vendor", hex(ids.subsystem_vendor, 4) + "\n");
  sysfs_.add_file(dir + "/subsystem_device", hex(ids.subsystem, 4) + "\n");
  sysfs_.add_link(dir + "/iommu_group", "../../../kernel/iommu_groups/" + std::to_string(e.info.group));
  sysfs_.add_link(dir + "/driver", "../../../bus/pci/drivers/vfio-pci");
  // QEMU tells an mdev from a PCI function by where this link leads.
  sysfs_.add_link(dir + "/subsystem", "../../../bus/pci");
  const std::string vfio = "vfio" + std::to_string(e.info.index);
  sysfs_.add_file(dir + "/vfio-dev/" + vfio + "/dev",
                  std::to_string(kVfioDevMajor) + ":" + std::to_string(e.info.index) + "\n");
  sysfs_.add_link("/sys/bus/pci/devices/" + bdf, "../../../devices/pci0000:00/" + bdf);
  sysfs_.add_link("/sys/bus/pci/drivers/vfio-pci/" + bdf, "../../../../devices/pci0000:00/" + bdf);
  sysfs_.add_link("/sys/kernel/iommu_groups/" + std::to_string(e.info.group) + "/devices/" + bdf,
                  "../../../../devices/pci0000:00/" + bdf);
}

std::vector<PciDeviceInfo> Machine::devices() const {
  std::lock_guard<std::mutex> g(mu_);
  std::vector<PciDeviceInfo> out;
  for (const Entry& e : entries_) out.push_back(e.info);
  return out;
}

std::shared_ptr<PciDevice> Machine::pci_device(const std::string& bdf) const {
  std::lock_guard<std::mutex> g(mu_);
  for (const Entry& e : entries_) {
    if (e.info.bdf == bdf) return e.dev->pci;
  }
  return nullptr;
}

int Machine::list_dir(const std::string& path, std::vector<std::string>* out) const {
  std::lock_guard<std::mutex> g(mu_);
  return sysfs_.list_dir(path, out);
}

int Machine::read_file(const std::string& path, std::string* out) const {
  std::lock_guard<std::mutex> g(mu_);
  return sysfs_.read_file(path, out);
}

int Machine::read_link(const std::string& path, std::string* out) const {
  std::lock_guard<std::mutex> g(mu_);
  return sysfs_.read_link(path, out);
}

int Machine::sysfs_realpath(const std::string& path, std::string* out) const {
  std::lock_guard<std::mutex> g(mu_);
  return sysfs_.canonical(path, out);
}

int Machine::sysfs_type(const std::string& path) const {
  std::lock_guard<std::mutex> g(mu_);
  return sysfs_.type_of(path);
}

}  // namespace fastmap::sim::vfio
