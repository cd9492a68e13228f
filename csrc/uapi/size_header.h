// Which ioctl requests take a struct whose first u32 is its size (iommufd `size`, VFIO
// `argsz`). The kernel reads and writes that many bytes of the caller's buffer, so a raw
// buffer shorter than that field must be refused before the call.
#pragma once

#include "uapi/iommufd.h"
#include "uapi/vfio.h"

namespace fastmap::uapi {

constexpr bool has_size_header(unsigned long request) {
  if ((request >> 8) != IOMMUFD_TYPE || request > 0xffff) return false;
  switch (request) {
    // By value, no argument, an int* (the container fd) or a char* (the device name).
    case VFIO_GET_API_VERSION:
    case VFIO_CHECK_EXTENSION:
    case VFIO_SET_IOMMU:
    case VFIO_GROUP_SET_CONTAINER:
    case VFIO_GROUP_UNSET_CONTAINER:
    case VFIO_GROUP_GET_DEVICE_FD:
    case VFIO_DEVICE_RESET:
      return false;
    default:
      return true;
  }
}

}  // namespace fastmap::uapi
