// An open IOMMU group node /dev/vfio/<N> (legacy VFIO): GET_STATUS, SET_CONTAINER /
// UNSET_CONTAINER with a Type1 container, and GET_DEVICE_FD for a device of the group.
// Only one open at a time, and not while a device of the group is bound through its cdev
// (EBUSY). Device fds keep the group open; closing the last reference detaches the
// container.
//
// Not modelled: SET_CONTAINER with an iommufd (the iommufd vfio-compat path) answers
// EBADFD, as for any file that is not a container.
#pragma once

#include <memory>

#include "sim/core/file.h"
#include "sim/vfio/vfio_device.h"

namespace fastmap::sim {
class KernelCore;
}

namespace fastmap::sim::vfio {

class GroupFile final : public File, public std::enable_shared_from_this<GroupFile> {
 public:
  // open("/dev/vfio/N"): the file, or nullptr with -errno in *err.
  static std::shared_ptr<GroupFile> open(KernelCore& kernel, std::shared_ptr<VfioGroup> group,
                                         int* err);
  GroupFile(KernelCore& kernel, std::shared_ptr<VfioGroup> group)
      : kernel_(kernel), group_(std::move(group)) {}
  ~GroupFile() override;

  long ioctl(unsigned long request, void* arg) noexcept override;
  bool chardev(unsigned* major, unsigned* minor) const noexcept override {
    *major = kVfioGroupMajor;
    *minor = static_cast<unsigned>(group_->id);
    return true;
  }

 private:
  long get_status(void* arg);
  long set_container(void* arg);
  long unset_container();
  long get_device_fd(void* arg);

  KernelCore& kernel_;
  std::shared_ptr<VfioGroup> group_;
};

}  // namespace fastmap::sim::vfio
