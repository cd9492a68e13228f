#include "sim/vfio/device_file.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <new>
#include <vector>

#include "sim/iommufd/device_api.h"
#include "sim/core/kernel_core.h"
#include "sim/core/mmio_trap.h"
#include "sim/core/user_memory.h"
#include "uapi/vfio.h"

namespace fastmap::sim::vfio {

namespace {

using namespace fastmap::uapi;

std::uint64_t uptr(const void* p) { return reinterpret_cast<std::uint64_t>(p); }

constexpr unsigned kRegionShift = 40;  // vfio-pci: region index << 40 is its file offset
constexpr std::uint64_t kRegionOffsetMask = (1ull << kRegionShift) - 1;
// Larger than any region here; bounds the bounce buffer of one pread/pwrite (the result
// is the same: a BAR access is cut at the BAR's end, a config access past 256 fails).
constexpr std::size_t kMaxRegionIo = 16u << 20;

// A BAR as the MMIO trap sees it. Holds the device, as the kernel's mapping holds the file.
class BarTarget final : public MmioTarget {
 public:
  BarTarget(std::shared_ptr<PciDevice> pci, unsigned bar) : pci_(std::move(pci)), bar_(bar) {}
  bool fill(std::uint64_t off, std::uint8_t* dst, std::size_t len) noexcept override {
    return pci_->mmio_fill(bar_, off, dst, len);
  }
  void store(std::uint64_t off, const std::uint8_t* before, const std::uint8_t* after,
             std::size_t len, std::uint64_t fault_off) noexcept override {
    pci_->mmio_store(bar_, off, before, after, len, fault_off);
  }

 private:
  std::shared_ptr<PciDevice> pci_;
  unsigned bar_;
};

}  // namespace

VfioDeviceFile::VfioDeviceFile(KernelCore& kernel, std::shared_ptr<VfioDevice> dev)
    : kernel_(kernel), dev_(std::move(dev)) {}

std::shared_ptr<VfioDeviceFile> VfioDeviceFile::open_from_group(KernelCore& kernel,
                                                                std::shared_ptr<VfioDevice> dev,
                                                                std::shared_ptr<File> group_file,
                                                                int* err) {
  // The caller holds the group lock and has checked the container (vfio_df_group_open).
  std::shared_ptr<VfioDeviceFile> f;
  try {
    f = std::make_shared<VfioDeviceFile>(kernel, dev);
  } catch (const std::bad_alloc&) {
    *err = -ENOMEM;
    return nullptr;
  }
  f->group_file_ = std::move(group_file);
  std::lock_guard<std::mutex> g(dev->mu);
  if (dev->open_count++ == 0) {
    // First open: the device starts using the group's container, and vfio-pci enables the
    // function (it cannot reset edu: no reset method).
    dev->group->container_users++;
    dev->pci->reinit_config();
    dev->mig.reset();
    dev->pci->enable_decoding();
  }
  f->access_granted_ = true;
  *err = 0;
  return f;
}

VfioDeviceFile::~VfioDeviceFile() {
  if (!access_granted_) return;
  if (group_file_) {
    VfioGroup& grp = *dev_->group;
    std::lock_guard<std::mutex> gg(grp.mu);
    std::lock_guard<std::mutex> g(dev_->mu);
    if (--dev_->open_count == 0) {
      dev_->irqs.release();  // vfio_pci_core_disable turns interrupts off first
      dev_->pci->reinit_config();  // vfio-pci disables the function: bus mastering off
      dev_->mig.reset();
      grp.container_users--;
    }
    return;  // group_file_ drops its reference after this
  }
  {
    std::lock_guard<std::mutex> g(dev_->mu);
    if (--dev_->open_count == 0) {
      dev_->irqs.release();
      dev_->pci->reinit_config();
      dev_->mig.reset();
    }
    attached_ = false;
    iommufd_device_unbind(*ictx_, devid_);  // detaches first
  }
  std::lock_guard<std::mutex> gg(dev_->group->mu);
  dev_->group->cdev_device_open_cnt--;
}

bool VfioDeviceFile::cdev_devt(unsigned* major, unsigned* minor) const noexcept {
  if (group_file_) return false;
  *major = kVfioDevMajor;
  *minor = dev_->index;
  return true;
}

long VfioDeviceFile::ioctl(unsigned long request, void* arg) noexcept {
  if (request == VFIO_DEVICE_BIND_IOMMUFD) return bind_iommufd(arg);
  if (!access_granted_) return -EINVAL;
  if (!group_file_) {
    if (request == VFIO_DEVICE_ATTACH_IOMMUFD_PT) return attach_pt(arg);
    if (request == VFIO_DEVICE_DETACH_IOMMUFD_PT) return detach_pt(arg);
  }
  switch (request) {
    case VFIO_DEVICE_FEATURE: return device_feature(arg);
    case VFIO_DEVICE_GET_INFO: return get_info(arg);
    case VFIO_DEVICE_GET_REGION_INFO: return get_region_info(arg);
    case VFIO_DEVICE_GET_IRQ_INFO: return get_irq_info(arg);
    case VFIO_DEVICE_SET_IRQS: return set_irqs(arg);
    case VFIO_DEVICE_RESET: return reset();
    default: return -ENOTTY;  // vfio-pci's answer to an ioctl it does not know
  }
}

long VfioDeviceFile::bind_iommufd(void* arg) noexcept {
  vfio_device_bind_iommufd bind{};
  constexpr std::size_t minsz = sizeof bind;  // offsetofend(out_devid)
  if (copy_from_user(&bind, uptr(arg), minsz)) return -EFAULT;
  if (bind.argsz < minsz || bind.flags != 0 || bind.iommufd < 0) return -EINVAL;
  if (group_file_) return -EINVAL;  // BIND is for cdev fds only

  VfioGroup& grp = *dev_->group;
  {
    // vfio_device_block_group: an open group and a bound cdev exclude each other.
    std::lock_guard<std::mutex> gg(grp.mu);
    if (grp.opened) return -EBUSY;
    grp.cdev_device_open_cnt++;
  }
  int rc = 0;
  {
    std::lock_guard<std::mutex> g(dev_->mu);
    std::shared_ptr<IommufdCtx> ictx;
    std::uint32_t devid = 0;
    if (access_granted_) {
      rc = -EINVAL;  // one fd cannot be bound twice
    } else if (auto file = kernel_.fget(bind.iommufd); !file) {
      rc = -EBADF;
    } else if (ictx = iommufd_ctx_from_file(file); !ictx) {
      rc = -EBADFD;
    } else if (dev_->open_count != 0) {
      rc = -EINVAL;  // only the group path may open a device more than once
    } else if ((rc = iommufd_device_bind(*ictx, dev_->pci, &devid)) == 0) {
      dev_->open_count++;
      dev_->pci->reinit_config();  // vfio-pci's open_device enables the function
      dev_->mig.reset();
      dev_->pci->enable_decoding();
      if (copy_to_user(uptr(arg) + offsetof(vfio_device_bind_iommufd, out_devid), &devid,
                       sizeof devid)) {
        dev_->open_count--;
        dev_->pci->reinit_config();
        iommufd_device_unbind(*ictx, devid);
        rc = -EFAULT;
      } else {
        ictx_ = std::move(ictx);
        devid_ = devid;
        access_granted_ = true;
      }
    }
  }
  if (rc != 0) {
    std::lock_guard<std::mutex> gg(grp.mu);
    grp.cdev_device_open_cnt--;
  }
  return rc;
}

long VfioDeviceFile::attach_pt(void* arg) noexcept {
  vfio_device_attach_iommufd_pt attach{};
  constexpr std::size_t minsz = sizeof attach;  // offsetofend(pt_id)
  if (copy_from_user(&attach, uptr(arg), minsz)) return -EFAULT;
  if (attach.argsz < minsz || attach.flags != 0) return -EINVAL;
  std::lock_guard<std::mutex> g(dev_->mu);
  // iommufd_device_attach replaces the domain when the device is already attached.
  int rc = iommufd_device_attach(*ictx_, devid_, &attach.pt_id);
  if (rc != 0) return rc;
  attached_ = true;
  if (copy_to_user(uptr(arg) + offsetof(vfio_device_attach_iommufd_pt, pt_id), &attach.pt_id,
                   sizeof attach.pt_id)) {
    iommufd_device_detach(*ictx_, devid_);
    attached_ = false;
    return -EFAULT;
  }
  return 0;
}

long VfioDeviceFile::detach_pt(void* arg) noexcept {
  vfio_device_detach_iommufd_pt detach{};
  constexpr std::size_t minsz = sizeof detach;  // offsetofend(flags)
  if (copy_from_user(&detach, uptr(arg), minsz)) return -EFAULT;
  if (detach.argsz < minsz || detach.flags != 0) return -EINVAL;
  std::lock_guard<std::mutex> g(dev_->mu);
  if (attached_) {
    iommufd_device_detach(*ictx_, devid_);
    attached_ = false;
  }
  return 0;
}

long VfioDeviceFile::get_info(void* arg) noexcept {
  vfio_device_info info{};
  constexpr std::size_t minsz = offsetof(vfio_device_info, cap_offset);  // offsetofend(num_irqs)
  if (copy_from_user(&info, uptr(arg), minsz)) return -EFAULT;
  if (info.argsz < minsz) return -EINVAL;
  const std::size_t out = std::min<std::size_t>(info.argsz, sizeof info);
  // edu has neither FLR nor a PM reset, so vfio-pci finds no reset method (6.12.95 in the VM
  // reports VFIO_DEVICE_FLAGS_PCI alone).
  info.flags = VFIO_DEVICE_FLAGS_PCI;
  info.num_regions = VFIO_PCI_NUM_REGIONS;
  info.num_irqs = VFIO_PCI_NUM_IRQS;
  return copy_to_user(uptr(arg), &info, out) ? -EFAULT : 0;
}

long VfioDeviceFile::get_region_info(void* arg) noexcept {
  vfio_region_info info{};
  constexpr std::size_t minsz = sizeof info;  // offsetofend(offset)
  if (copy_from_user(&info, uptr(arg), minsz)) return -EFAULT;
  if (info.argsz < minsz) return -EINVAL;
  const PciDevice& pci = *dev_->pci;
  info.cap_offset = 0;
  if (info.index == VFIO_PCI_CONFIG_REGION_INDEX) {
    info.offset = static_cast<std::uint64_t>(info.index) << kRegionShift;
    info.size = PciDevice::kConfigSize;
    info.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
  } else if (info.index <= VFIO_PCI_BAR5_REGION_INDEX) {
    info.offset = static_cast<std::uint64_t>(info.index) << kRegionShift;
    info.size = pci.bar_size(info.index);
    info.flags = info.size ? (VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE) : 0;
    // Memory BARs of a page or more are mmappable; with no MSI-X table in the BAR there is
    // no capability (vfio-pci adds MSIX_MAPPABLE only to the MSI-X BAR).
    if (info.size && mmio_trap_supported()) info.flags |= VFIO_REGION_INFO_FLAG_MMAP;
  } else if (info.index == VFIO_PCI_ROM_REGION_INDEX) {
    info.offset = static_cast<std::uint64_t>(info.index) << kRegionShift;
    info.size = 0;  // no option ROM
    info.flags = 0;
  } else {
    return -EINVAL;  // no VGA region, no device-specific regions
  }
  return copy_to_user(uptr(arg), &info, minsz) ? -EFAULT : 0;
}

long VfioDeviceFile::get_irq_info(void* arg) noexcept {
  vfio_irq_info info{};
  constexpr std::size_t minsz = sizeof info;  // offsetofend(count)
  if (copy_from_user(&info, uptr(arg), minsz)) return -EFAULT;
  if (info.argsz < minsz || info.index >= VFIO_PCI_NUM_IRQS) return -EINVAL;
  // The error IRQ exists only for PCI Express functions; this one is conventional PCI.
  if (info.index == VFIO_PCI_ERR_IRQ_INDEX) return -EINVAL;
  info.flags = VFIO_IRQ_INFO_EVENTFD;
  info.count = dev_->irqs.count(info.index);
  if (info.index == VFIO_PCI_INTX_IRQ_INDEX) {
    info.flags |= VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED;
  } else {
    info.flags |= VFIO_IRQ_INFO_NORESIZE;  // no dynamic MSI-X either
  }
  return copy_to_user(uptr(arg), &info, minsz) ? -EFAULT : 0;
}

long VfioDeviceFile::set_irqs(void* arg) noexcept {
  vfio_irq_set hdr{};
  constexpr std::size_t minsz = sizeof hdr;  // offsetofend(count)
  if (copy_from_user(&hdr, uptr(arg), minsz)) return -EFAULT;
  const std::uint32_t max = dev_->irqs.count(hdr.index);
  // vfio_set_irqs_validate_and_prepare.
  if (hdr.argsz < minsz || hdr.index >= VFIO_PCI_NUM_IRQS ||
      hdr.count >= UINT32_MAX - hdr.start ||
      (hdr.flags & ~(VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_ACTION_TYPE_MASK))) {
    return -EINVAL;
  }
  if (hdr.start >= max || hdr.start + hdr.count > max) return -EINVAL;
  std::size_t size = 0;
  switch (hdr.flags & VFIO_IRQ_SET_DATA_TYPE_MASK) {
    case VFIO_IRQ_SET_DATA_NONE: size = 0; break;
    case VFIO_IRQ_SET_DATA_BOOL: size = sizeof(std::uint8_t); break;
    case VFIO_IRQ_SET_DATA_EVENTFD: size = sizeof(std::int32_t); break;
    default: return -EINVAL;
  }
  const std::uint64_t data_size = static_cast<std::uint64_t>(hdr.count) * size;
  if (size && hdr.argsz - minsz < data_size) return -EINVAL;
  std::vector<std::uint8_t> data;
  try {
    data.resize(static_cast<std::size_t>(data_size));
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
  if (data_size && copy_from_user(data.data(), uptr(arg) + minsz, data.size())) return -EFAULT;
  return dev_->irqs.set(hdr.flags, hdr.index, hdr.start, hdr.count,
                        data.empty() ? nullptr : data.data());
}

long VfioDeviceFile::reset() noexcept {
  // vfio-pci refuses a device with no reset method (reset_works false), and edu has none:
  // neither FLR nor a PM reset (6.12.95 in the VM leaves VFIO_DEVICE_FLAGS_RESET clear).
  return -EINVAL;
}

int VfioDeviceFile::mmap(void* addr, std::size_t length, int prot, int flags,
                         std::uint64_t offset, void** out) noexcept {
  const std::uint64_t ps = host_page_size();
  // do_mmap's own checks come first.
  if (length == 0 || (offset & (ps - 1))) return -EINVAL;
  if (!access_granted_) return -EINVAL;
  // vfio_pci_core_mmap.
  const std::uint64_t index = offset >> kRegionShift;
  if (index >= VFIO_PCI_NUM_REGIONS) return -EINVAL;
  const int type = flags & MAP_TYPE;
  if (type != MAP_SHARED && type != MAP_SHARED_VALIDATE) return -EINVAL;
  if (index >= VFIO_PCI_ROM_REGION_INDEX) return -EINVAL;
  const std::uint64_t bar_len = dev_->pci->bar_size(static_cast<unsigned>(index));
  if (bar_len == 0 || !mmio_trap_supported()) return -EINVAL;  // not mmap-supported
  const std::uint64_t phys_len = (bar_len + ps - 1) & ~(ps - 1);
  const std::uint64_t req_len = (length + ps - 1) & ~(ps - 1);
  const std::uint64_t req_start = offset & kRegionOffsetMask;
  if (req_start + req_len > phys_len || req_start + req_len < req_start) return -EINVAL;
  std::shared_ptr<MmioTarget> target;
  try {
    target = std::make_shared<BarTarget>(dev_->pci, static_cast<unsigned>(index));
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
  const long r = mmio_map(addr, length, prot, flags, std::move(target), req_start);
  if (r < 0) return static_cast<int>(r);
  *out = reinterpret_cast<void*>(r);
  return 0;
}

ssize_t VfioDeviceFile::region_rw(char* buf, std::size_t count, std::uint64_t off,
                                  bool write) noexcept {
  const std::uint64_t index = off >> kRegionShift;
  const std::uint64_t pos = off & kRegionOffsetMask;
  PciDevice& pci = *dev_->pci;
  if (index == VFIO_PCI_CONFIG_REGION_INDEX) return pci.config_rw(buf, count, pos, write);
  if (index <= VFIO_PCI_BAR5_REGION_INDEX) {
    return pci.bar_rw(static_cast<unsigned>(index), buf, count, pos, write);
  }
  return -EINVAL;  // no ROM, no VGA, no device-specific regions
}

ssize_t VfioDeviceFile::pread(void* buf, std::size_t count, std::uint64_t off) noexcept {
  if (!access_granted_) return -EINVAL;
  if (count == 0) return 0;
  count = std::min(count, kMaxRegionIo);
  try {
    std::vector<char> tmp(count);
    ssize_t n = region_rw(tmp.data(), count, off, false);
    if (n <= 0) return n;
    if (copy_to_user(uptr(buf), tmp.data(), static_cast<std::size_t>(n))) return -EFAULT;
    return n;
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
}

ssize_t VfioDeviceFile::pwrite(const void* buf, std::size_t count, std::uint64_t off) noexcept {
  if (!access_granted_) return -EINVAL;
  if (count == 0) return 0;
  count = std::min(count, kMaxRegionIo);
  try {
    std::vector<char> tmp(count);
    if (copy_from_user(tmp.data(), uptr(buf), count)) return -EFAULT;
    return region_rw(tmp.data(), count, off, true);
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
}

}  // namespace fastmap::sim::vfio

namespace fastmap::sim::vfio {

ssize_t VfioDeviceFile::read(void* buf, std::size_t count) noexcept {
  const ssize_t n = pread(buf, count, pos_.load());
  if (n > 0) pos_ += static_cast<std::uint64_t>(n);
  return n;
}

ssize_t VfioDeviceFile::write(const void* buf, std::size_t count) noexcept {
  const ssize_t n = pwrite(buf, count, pos_.load());
  if (n > 0) pos_ += static_cast<std::uint64_t>(n);
  return n;
}

}  // namespace fastmap::sim::vfio
