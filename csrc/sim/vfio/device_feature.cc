// VFIO_DEVICE_FEATURE on a simulated vfio-pci device (vfio_ioctl_device_feature): the
// migration features of a device whose model migrates (sim/vfio/migration.h). Device DMA
// logging, low power and the VF token are not offered, so those features are ENOTTY.
#include <cstddef>

#include "sim/core/kernel_core.h"
#include "sim/core/user_memory.h"
#include "sim/vfio/device_file.h"
#include "uapi/vfio_migration.h"

namespace fastmap::sim::vfio {

namespace {

using namespace fastmap::uapi;

constexpr std::uint32_t kFeatureFlagsKnown = VFIO_DEVICE_FEATURE_MASK | VFIO_DEVICE_FEATURE_GET |
                                             VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_PROBE;

std::uint64_t uptr(const void* p) { return reinterpret_cast<std::uint64_t>(p); }

// vfio_check_feature: 1 to go on, 0 for a successful PROBE, or -EINVAL.
int check_feature(std::uint32_t flags, std::size_t argsz, std::uint32_t supported,
                  std::size_t minsz) {
  if ((flags & (VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET)) & ~supported) return -EINVAL;
  if (flags & VFIO_DEVICE_FEATURE_PROBE) return 0;
  if (!(flags & (VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET))) return -EINVAL;
  if (argsz < minsz) return -EINVAL;
  return 1;
}

}  // namespace

long VfioDeviceFile::device_feature(void* arg) noexcept {
  vfio_device_feature feature{};
  if (copy_from_user(&feature, uptr(arg), sizeof feature)) return -EFAULT;
  if (feature.argsz < sizeof feature) return -EINVAL;
  if (feature.flags & ~kFeatureFlagsKnown) return -EINVAL;
  if (!(feature.flags & VFIO_DEVICE_FEATURE_PROBE) && (feature.flags & VFIO_DEVICE_FEATURE_SET) &&
      (feature.flags & VFIO_DEVICE_FEATURE_GET)) {
    return -EINVAL;
  }
  const std::uint64_t data = uptr(arg) + sizeof feature;
  const std::size_t argsz = feature.argsz - sizeof feature;
  Migration& mig = dev_->mig;
  switch (feature.flags & VFIO_DEVICE_FEATURE_MASK) {
    case VFIO_DEVICE_FEATURE_MIGRATION: {
      if (!mig.flags()) return -ENOTTY;  // no mig_ops
      vfio_device_feature_migration out{};
      const int rc = check_feature(feature.flags, argsz, VFIO_DEVICE_FEATURE_GET, sizeof out);
      if (rc != 1) return rc;
      out.flags = mig.flags();
      return copy_to_user(data, &out, sizeof out) ? -EFAULT : 0;
    }
    case VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE: {
      if (!mig.flags()) return -ENOTTY;
      vfio_device_feature_mig_state st{};
      const int rc = check_feature(feature.flags, argsz,
                                   VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_GET, sizeof st);
      if (rc != 1) return rc;
      if (copy_from_user(&st, data, sizeof st)) return -EFAULT;
      int err = 0;
      if (feature.flags & VFIO_DEVICE_FEATURE_GET) {
        st.device_state = mig.state();
      } else {
        std::shared_ptr<File> file;
        err = mig.set_state(st.device_state, &file);
        if (err == 0 && file) {
          // vfio_ioct_mig_return_fd: the fd is installed only once the reply is written.
          const int fd = kernel_.install(file);
          if (fd < 0) return fd;
          st.data_fd = fd;
          if (copy_to_user(data, &st, sizeof st)) {
            kernel_.close(fd);
            return -EFAULT;
          }
          return 0;
        }
      }
      st.data_fd = -1;
      if (copy_to_user(data, &st, sizeof st)) return -EFAULT;
      return err;
    }
    case VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: {
      if (!mig.flags()) return -ENOTTY;
      vfio_device_feature_mig_data_size out{};
      const int rc = check_feature(feature.flags, argsz, VFIO_DEVICE_FEATURE_GET, sizeof out);
      if (rc != 1) return rc;
      out.stop_copy_length = mig.stop_copy_size();
      return copy_to_user(data, &out, sizeof out) ? -EFAULT : 0;
    }
    default:
      return -ENOTTY;  // no device DMA logging, low power or VF token
  }
}

}  // namespace fastmap::sim::vfio
