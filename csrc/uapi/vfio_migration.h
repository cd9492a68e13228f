// VFIO migration v2 uAPI (include/uapi/linux/vfio.h, Linux 6.12): the migration device
// features, enum vfio_device_mig_state and VFIO_MIG_GET_PRECOPY_INFO's number.
#pragma once

#include "uapi/layout.h"
#include "uapi/vfio.h"

namespace fastmap::uapi {

inline constexpr u32 VFIO_DEVICE_FEATURE_MIGRATION = 1;
inline constexpr u32 VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE = 2;
inline constexpr u32 VFIO_DEVICE_FEATURE_MIG_DATA_SIZE = 9;

inline constexpr u64 VFIO_MIGRATION_STOP_COPY = 1u << 0;
inline constexpr u64 VFIO_MIGRATION_P2P = 1u << 1;
inline constexpr u64 VFIO_MIGRATION_PRE_COPY = 1u << 2;

inline constexpr u32 VFIO_DEVICE_STATE_ERROR = 0;
inline constexpr u32 VFIO_DEVICE_STATE_STOP = 1;
inline constexpr u32 VFIO_DEVICE_STATE_RUNNING = 2;
inline constexpr u32 VFIO_DEVICE_STATE_STOP_COPY = 3;
inline constexpr u32 VFIO_DEVICE_STATE_RESUMING = 4;
inline constexpr u32 VFIO_DEVICE_STATE_RUNNING_P2P = 5;
inline constexpr u32 VFIO_DEVICE_STATE_PRE_COPY = 6;
inline constexpr u32 VFIO_DEVICE_STATE_PRE_COPY_P2P = 7;
inline constexpr u32 VFIO_DEVICE_STATE_NR = 8;

inline constexpr unsigned long VFIO_MIG_GET_PRECOPY_INFO = vfio_io(21);

struct vfio_device_feature_migration {
  static constexpr const char kUapiName[] = "vfio_device_feature_migration";
  u64 flags;
};
FM_UAPI_LAYOUT(vfio_device_feature_migration, 8, FM_F(flags, 0))

struct vfio_device_feature_mig_state {
  static constexpr const char kUapiName[] = "vfio_device_feature_mig_state";
  u32 device_state;
  s32 data_fd;
};
FM_UAPI_LAYOUT(vfio_device_feature_mig_state, 8, FM_F(device_state, 0), FM_F(data_fd, 4))

struct vfio_device_feature_mig_data_size {
  static constexpr const char kUapiName[] = "vfio_device_feature_mig_data_size";
  u64 stop_copy_length;
};
FM_UAPI_LAYOUT(vfio_device_feature_mig_data_size, 8, FM_F(stop_copy_length, 0))

struct vfio_precopy_info {
  static constexpr const char kUapiName[] = "vfio_precopy_info";
  u32 argsz;
  u32 flags;
  u64 initial_bytes;
  u64 dirty_bytes;
};
FM_UAPI_LAYOUT(vfio_precopy_info, 24, FM_F(argsz, 0), FM_F(flags, 4), FM_F(initial_bytes, 8),
               FM_F(dirty_bytes, 16))

}  // namespace fastmap::uapi
