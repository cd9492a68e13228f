#include "sim/vfio/group.h"

#include <cerrno>
#include <new>
#include <string>

#include "sim/core/kernel_core.h"
#include "sim/core/user_memory.h"
#include "sim/vfio/container.h"
#include "sim/vfio/device_file.h"
#include "uapi/vfio.h"

namespace fastmap::sim::vfio {

namespace {

using namespace fastmap::uapi;

std::uint64_t uptr(const void* p) { return reinterpret_cast<std::uint64_t>(p); }

// strndup_user(arg, PAGE_SIZE): the NUL-terminated string at a user pointer; -EFAULT for
// a bad pointer, -EINVAL when no NUL comes within a page.
int string_from_user(std::uint64_t p, std::string* out) {
  const std::uint64_t max = host_page_size();
  out->clear();
  for (std::uint64_t i = 0; i < max; ++i) {
    char c;
    if (copy_from_user(&c, p + i, 1)) return -EFAULT;
    if (c == '\0') return 0;
    out->push_back(c);
  }
  return -EINVAL;
}

}  // namespace

std::shared_ptr<GroupFile> GroupFile::open(KernelCore& kernel, std::shared_ptr<VfioGroup> group,
                                           int* err) {
  std::lock_guard<std::mutex> g(group->mu);
  if (group->devices.empty()) {
    *err = -ENODEV;
    return nullptr;
  }
  // A device bound through its cdev, or another open of the group, excludes this one.
  if (group->cdev_device_open_cnt != 0 || group->opened) {
    *err = -EBUSY;
    return nullptr;
  }
  auto f = std::make_shared<GroupFile>(kernel, group);
  group->opened = true;
  *err = 0;
  return f;
}

GroupFile::~GroupFile() {
  // Device fds hold a reference to this file, so no device of the group is open here.
  std::lock_guard<std::mutex> g(group_->mu);
  if (group_->container) {
    group_->container->detach_group(*group_);
    group_->container.reset();
    group_->container_users = 0;
  }
  group_->opened = false;
}

long GroupFile::ioctl(unsigned long request, void* arg) noexcept {
  try {
    switch (request) {
      case VFIO_GROUP_GET_STATUS: return get_status(arg);
      case VFIO_GROUP_SET_CONTAINER: return set_container(arg);
      case VFIO_GROUP_UNSET_CONTAINER: return unset_container();
      case VFIO_GROUP_GET_DEVICE_FD: return get_device_fd(arg);
      default: return -ENOTTY;
    }
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
}

long GroupFile::get_status(void* arg) {
  vfio_group_status status{};
  constexpr std::size_t minsz = sizeof status;  // offsetofend(flags)
  if (copy_from_user(&status, uptr(arg), minsz)) return -EFAULT;
  if (status.argsz < minsz) return -EINVAL;
  status.flags = 0;
  {
    std::lock_guard<std::mutex> g(group_->mu);
    if (group_->container) {
      status.flags = VFIO_GROUP_FLAGS_CONTAINER_SET | VFIO_GROUP_FLAGS_VIABLE;
    } else if (group_->cdev_device_open_cnt == 0) {
      status.flags = VFIO_GROUP_FLAGS_VIABLE;  // nobody else owns the group's DMA
    }
  }
  return copy_to_user(uptr(arg), &status, minsz) ? -EFAULT : 0;
}

long GroupFile::set_container(void* arg) {
  int fd = -1;
  if (copy_from_user(&fd, uptr(arg), sizeof fd)) return -EFAULT;
  auto file = kernel_.fget(fd);
  if (!file) return -EBADF;
  std::lock_guard<std::mutex> g(group_->mu);
  if (group_->container) return -EINVAL;
  auto cf = std::dynamic_pointer_cast<ContainerFile>(file);
  if (!cf) return -EBADFD;  // not a container (an iommufd's compat container: not modelled)
  if (int rc = cf->container()->attach_group(*group_)) return rc;
  group_->container = cf->container();
  group_->container_users = 1;
  return 0;
}

long GroupFile::unset_container() {
  std::lock_guard<std::mutex> g(group_->mu);
  if (!group_->container) return -EINVAL;
  if (group_->container_users != 1) return -EBUSY;  // a device of the group is open
  group_->container->detach_group(*group_);
  group_->container.reset();
  group_->container_users = 0;
  return 0;
}

long GroupFile::get_device_fd(void* arg) {
  std::string name;
  if (int rc = string_from_user(uptr(arg), &name)) return rc;
  std::shared_ptr<VfioDevice> dev;
  for (const auto& d : group_->devices) {
    if (d->pci->name() == name) dev = d;
  }
  if (!dev) return -ENODEV;
  std::shared_ptr<VfioDeviceFile> f;
  {
    std::lock_guard<std::mutex> g(group_->mu);
    // The group needs a container with an IOMMU backend before its devices can be used.
    if (!group_->container) return -EINVAL;
    if (!group_->container->backend_set()) return -EINVAL;
    int err = 0;
    f = VfioDeviceFile::open_from_group(kernel_, dev, shared_from_this(), &err);
    if (!f) return err;
  }
  int fd = kernel_.install(f);
  return fd;  // on -EMFILE the file is dropped again, closing the device
}

}  // namespace fastmap::sim::vfio
