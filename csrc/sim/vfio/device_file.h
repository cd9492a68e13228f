// An open VFIO device file (struct vfio_device_file). Two ways to get one, as in the
// kernel: open the cdev /dev/vfio/devices/vfioN (unbound: every ioctl except
// VFIO_DEVICE_BIND_IOMMUFD, and pread/pwrite, fail with EINVAL until it is bound to an
// iommufd), or VFIO_GROUP_GET_DEVICE_FD on a group with a Type1 container (usable at once;
// DMA goes through the container's domain). The two paths exclude each other: a bound cdev
// keeps its group from being opened and an open group makes BIND fail with EBUSY.
//
// Regions are reached with pread/pwrite at index << 40 (config space and BAR0), and BAR0
// with mmap: a trapped mapping whose loads and stores reach the device model
// (sim/core/mmio_trap.h, where its limits are).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "sim/core/file.h"
#include "sim/vfio/vfio_device.h"

namespace fastmap::sim {
class KernelCore;
class IommufdCtx;
}  // namespace fastmap::sim

namespace fastmap::sim::vfio {

class VfioDeviceFile final : public File {
 public:
  // open() of the cdev.
  VfioDeviceFile(KernelCore& kernel, std::shared_ptr<VfioDevice> dev);
  // GROUP_GET_DEVICE_FD: `group_file` stays referenced (the group counts as open) until
  // this file is closed. Fails with -errno through *err.
  static std::shared_ptr<VfioDeviceFile> open_from_group(KernelCore& kernel,
                                                         std::shared_ptr<VfioDevice> dev,
                                                         std::shared_ptr<File> group_file,
                                                         int* err);
  ~VfioDeviceFile() override;

  long ioctl(unsigned long request, void* arg) noexcept override;
  ssize_t pread(void* buf, std::size_t count, std::uint64_t off) noexcept override;
  ssize_t pwrite(const void* buf, std::size_t count, std::uint64_t off) noexcept override;
  // read(2)/write(2): the region access at the file position, which they advance.
  ssize_t read(void* buf, std::size_t count) noexcept override;
  ssize_t write(const void* buf, std::size_t count) noexcept override;
  int mmap(void* addr, std::size_t length, int prot, int flags, std::uint64_t offset,
           void** out) noexcept override;

  // What fstat() reports as st_rdev: the cdev's (major, minor) when the file was opened
  // from /dev/vfio/devices/vfioN; false for a GROUP_GET_DEVICE_FD file, which is an
  // anonymous inode and not a char device. Userspace (QEMU's open_cdev) checks this
  // against sysfs vfio-dev/vfioN/dev to be sure it opened the device it meant.
  bool cdev_devt(unsigned* major, unsigned* minor) const noexcept;
  bool chardev(unsigned* major, unsigned* minor) const noexcept override {
    return cdev_devt(major, minor);
  }

 private:
  long bind_iommufd(void* arg) noexcept;
  long attach_pt(void* arg) noexcept;
  long detach_pt(void* arg) noexcept;
  long get_info(void* arg) noexcept;
  long get_region_info(void* arg) noexcept;
  long get_irq_info(void* arg) noexcept;
  long set_irqs(void* arg) noexcept;
  long device_feature(void* arg) noexcept;
  long reset() noexcept;
  ssize_t region_rw(char* buf, std::size_t count, std::uint64_t off, bool write) noexcept;

  KernelCore& kernel_;
  std::shared_ptr<VfioDevice> dev_;
  std::shared_ptr<File> group_file_;  // set when opened through the group
  // Set once the file may be used (bound, or opened through the group); read without the
  // device lock by every ioctl, as the kernel's smp_load_acquire does.
  std::atomic<bool> access_granted_{false};
  std::atomic<std::uint64_t> pos_{0};  // f_pos
  // cdev binding, guarded by dev_->mu.
  std::shared_ptr<IommufdCtx> ictx_;
  std::uint32_t devid_ = 0;
  bool attached_ = false;
};

}  // namespace fastmap::sim::vfio
