// IOMMUFD uAPI (include/uapi/linux/iommufd.h), LP64. One definition of each struct;
// offsets and sizes are checked against the kernel header's documented layout.
#pragma once

#include "uapi/layout.h"

namespace fastmap::uapi {

// Every iommufd command is _IO(';', nr): no size or direction bits; the kernel reads the
// struct size from the first u32 of the argument.
inline constexpr u32 IOMMUFD_TYPE = ';';
constexpr unsigned long iommufd_io(u32 nr) { return (IOMMUFD_TYPE << 8) | nr; }

inline constexpr u32 IOMMUFD_CMD_BASE = 0x80;
inline constexpr unsigned long IOMMU_DESTROY = iommufd_io(0x80);
inline constexpr unsigned long IOMMU_IOAS_ALLOC = iommufd_io(0x81);
inline constexpr unsigned long IOMMU_IOAS_ALLOW_IOVAS = iommufd_io(0x82);
inline constexpr unsigned long IOMMU_IOAS_COPY = iommufd_io(0x83);
inline constexpr unsigned long IOMMU_IOAS_IOVA_RANGES = iommufd_io(0x84);
inline constexpr unsigned long IOMMU_IOAS_MAP = iommufd_io(0x85);
inline constexpr unsigned long IOMMU_IOAS_UNMAP = iommufd_io(0x86);
inline constexpr unsigned long IOMMU_OPTION = iommufd_io(0x87);
inline constexpr unsigned long IOMMU_VFIO_IOAS = iommufd_io(0x88);
inline constexpr unsigned long IOMMU_HWPT_ALLOC = iommufd_io(0x89);
inline constexpr unsigned long IOMMU_GET_HW_INFO = iommufd_io(0x8a);
inline constexpr unsigned long IOMMU_HWPT_SET_DIRTY_TRACKING = iommufd_io(0x8b);
inline constexpr unsigned long IOMMU_HWPT_GET_DIRTY_BITMAP = iommufd_io(0x8c);
inline constexpr unsigned long IOMMU_HWPT_INVALIDATE = iommufd_io(0x8d);
inline constexpr unsigned long IOMMU_FAULT_QUEUE_ALLOC = iommufd_io(0x8e);
inline constexpr unsigned long IOMMU_IOAS_MAP_FILE = iommufd_io(0x8f);
inline constexpr unsigned long IOMMU_VIOMMU_ALLOC = iommufd_io(0x90);
inline constexpr unsigned long IOMMU_VDEVICE_ALLOC = iommufd_io(0x91);
inline constexpr unsigned long IOMMU_IOAS_CHANGE_PROCESS = iommufd_io(0x92);

// IOMMU_IOAS_MAP / MAP_FILE / COPY flags.
inline constexpr u32 IOMMU_IOAS_MAP_FIXED_IOVA = 1u << 0;
inline constexpr u32 IOMMU_IOAS_MAP_WRITEABLE = 1u << 1;
inline constexpr u32 IOMMU_IOAS_MAP_READABLE = 1u << 2;

// IOMMU_OPTION.
inline constexpr u32 IOMMU_OPTION_RLIMIT_MODE = 0;
inline constexpr u32 IOMMU_OPTION_HUGE_PAGES = 1;
inline constexpr u16 IOMMU_OPTION_OP_SET = 0;
inline constexpr u16 IOMMU_OPTION_OP_GET = 1;

// IOMMU_VFIO_IOAS ops.
inline constexpr u16 IOMMU_VFIO_IOAS_GET = 0;
inline constexpr u16 IOMMU_VFIO_IOAS_SET = 1;
inline constexpr u16 IOMMU_VFIO_IOAS_CLEAR = 2;

// IOMMU_HWPT_ALLOC flags and data types.
inline constexpr u32 IOMMU_HWPT_ALLOC_NEST_PARENT = 1u << 0;
inline constexpr u32 IOMMU_HWPT_ALLOC_DIRTY_TRACKING = 1u << 1;
inline constexpr u32 IOMMU_HWPT_FAULT_ID_VALID = 1u << 2;
inline constexpr u32 IOMMU_HWPT_ALLOC_PASID = 1u << 3;
inline constexpr u32 IOMMU_HWPT_DATA_NONE = 0;
inline constexpr u32 IOMMU_HWPT_DATA_VTD_S1 = 1;
inline constexpr u32 IOMMU_HWPT_DATA_ARM_SMMUV3 = 2;

// IOMMU_GET_HW_INFO.
inline constexpr u32 IOMMU_HW_INFO_TYPE_NONE = 0;
inline constexpr u32 IOMMU_HW_INFO_TYPE_INTEL_VTD = 1;
inline constexpr u32 IOMMU_HW_INFO_TYPE_ARM_SMMUV3 = 2;
inline constexpr u64 IOMMU_HW_CAP_DIRTY_TRACKING = 1ull << 0;
inline constexpr u32 IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17 = 1u << 0;

// Dirty tracking.
inline constexpr u32 IOMMU_HWPT_DIRTY_TRACKING_ENABLE = 1;
inline constexpr u32 IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR = 1;

struct iommu_destroy {
  static constexpr const char kUapiName[] = "iommu_destroy";
  u32 size;
  u32 id;
};
FM_UAPI_LAYOUT(iommu_destroy, 8, FM_F(size, 0), FM_F(id, 4))

struct iommu_ioas_alloc {
  static constexpr const char kUapiName[] = "iommu_ioas_alloc";
  u32 size;
  u32 flags;
  u32 out_ioas_id;
};
FM_UAPI_LAYOUT(iommu_ioas_alloc, 12, FM_F(size, 0), FM_F(flags, 4), FM_F(out_ioas_id, 8))

// last is inclusive.
struct iommu_iova_range {
  static constexpr const char kUapiName[] = "iommu_iova_range";
  u64 start;
  u64 last;
};
FM_UAPI_LAYOUT(iommu_iova_range, 16, FM_F(start, 0), FM_F(last, 8))

struct iommu_ioas_iova_ranges {
  static constexpr const char kUapiName[] = "iommu_ioas_iova_ranges";
  u32 size;
  u32 ioas_id;
  u32 num_iovas;
  u32 reserved;
  u64 allowed_iovas;  // user pointer to iommu_iova_range[num_iovas]
  u64 out_iova_alignment;
};
FM_UAPI_LAYOUT(iommu_ioas_iova_ranges, 32, FM_F(size, 0), FM_F(ioas_id, 4),
               FM_F(num_iovas, 8), FM_F(reserved, 12), FM_F(allowed_iovas, 16),
               FM_F(out_iova_alignment, 24))

struct iommu_ioas_allow_iovas {
  static constexpr const char kUapiName[] = "iommu_ioas_allow_iovas";
  u32 size;
  u32 ioas_id;
  u32 num_iovas;
  u32 reserved;
  u64 allowed_iovas;
};
FM_UAPI_LAYOUT(iommu_ioas_allow_iovas, 24, FM_F(size, 0), FM_F(ioas_id, 4),
               FM_F(num_iovas, 8), FM_F(reserved, 12), FM_F(allowed_iovas, 16))

struct iommu_ioas_map {
  static constexpr const char kUapiName[] = "iommu_ioas_map";
  u32 size;
  u32 flags;
  u32 ioas_id;
  u32 reserved;
  u64 user_va;
  u64 length;
  u64 iova;
};
FM_UAPI_LAYOUT(iommu_ioas_map, 40, FM_F(size, 0), FM_F(flags, 4), FM_F(ioas_id, 8),
               FM_F(reserved, 12), FM_F(user_va, 16), FM_F(length, 24), FM_F(iova, 32))

struct iommu_ioas_map_file {
  static constexpr const char kUapiName[] = "iommu_ioas_map_file";
  u32 size;
  u32 flags;
  u32 ioas_id;
  s32 fd;
  u64 start;
  u64 length;
  u64 iova;
};
FM_UAPI_LAYOUT(iommu_ioas_map_file, 40, FM_F(size, 0), FM_F(flags, 4), FM_F(ioas_id, 8),
               FM_F(fd, 12), FM_F(start, 16), FM_F(length, 24), FM_F(iova, 32))

struct iommu_ioas_copy {
  static constexpr const char kUapiName[] = "iommu_ioas_copy";
  u32 size;
  u32 flags;
  u32 dst_ioas_id;
  u32 src_ioas_id;
  u64 length;
  u64 dst_iova;
  u64 src_iova;
};
FM_UAPI_LAYOUT(iommu_ioas_copy, 40, FM_F(size, 0), FM_F(flags, 4), FM_F(dst_ioas_id, 8),
               FM_F(src_ioas_id, 12), FM_F(length, 16), FM_F(dst_iova, 24),
               FM_F(src_iova, 32))

struct iommu_ioas_unmap {
  static constexpr const char kUapiName[] = "iommu_ioas_unmap";
  u32 size;
  u32 ioas_id;
  u64 iova;
  u64 length;
};
FM_UAPI_LAYOUT(iommu_ioas_unmap, 24, FM_F(size, 0), FM_F(ioas_id, 4), FM_F(iova, 8),
               FM_F(length, 16))

struct iommu_option {
  static constexpr const char kUapiName[] = "iommu_option";
  u32 size;
  u32 option_id;
  u16 op;
  u16 reserved;
  u32 object_id;
  u64 val64;
};
FM_UAPI_LAYOUT(iommu_option, 24, FM_F(size, 0), FM_F(option_id, 4), FM_F(op, 8),
               FM_F(reserved, 10), FM_F(object_id, 12), FM_F(val64, 16))

struct iommu_vfio_ioas {
  static constexpr const char kUapiName[] = "iommu_vfio_ioas";
  u32 size;
  u32 ioas_id;
  u16 op;
  u16 reserved;
};
FM_UAPI_LAYOUT(iommu_vfio_ioas, 12, FM_F(size, 0), FM_F(ioas_id, 4), FM_F(op, 8),
               FM_F(reserved, 10))

struct iommu_hwpt_alloc {
  static constexpr const char kUapiName[] = "iommu_hwpt_alloc";
  u32 size;
  u32 flags;
  u32 dev_id;
  u32 pt_id;
  u32 out_hwpt_id;
  u32 reserved;
  u32 data_type;
  u32 data_len;
  u64 data_uptr;
  u32 fault_id;
  u32 reserved2;
};
FM_UAPI_LAYOUT(iommu_hwpt_alloc, 48, FM_F(size, 0), FM_F(flags, 4), FM_F(dev_id, 8),
               FM_F(pt_id, 12), FM_F(out_hwpt_id, 16), FM_F(reserved, 20),
               FM_F(data_type, 24), FM_F(data_len, 28), FM_F(data_uptr, 32),
               FM_F(fault_id, 40), FM_F(reserved2, 44))

struct iommu_hw_info {
  static constexpr const char kUapiName[] = "iommu_hw_info";
  u32 size;
  u32 flags;
  u32 dev_id;
  u32 data_len;  // in: user buffer length; out: the driver's record length
  u64 data_uptr;
  u32 out_data_type;
  u8 out_max_pasid_log2;
  u8 reserved[3];
  u64 out_capabilities;
};
FM_UAPI_LAYOUT(iommu_hw_info, 40, FM_F(size, 0), FM_F(flags, 4), FM_F(dev_id, 8),
               FM_F(data_len, 12), FM_F(data_uptr, 16), FM_F(out_data_type, 24),
               FM_F(out_max_pasid_log2, 28), FM_F(reserved, 29), FM_F(out_capabilities, 32))

struct iommu_hw_info_vtd {
  static constexpr const char kUapiName[] = "iommu_hw_info_vtd";
  u32 flags;
  u32 reserved;
  u64 cap_reg;
  u64 ecap_reg;
};
FM_UAPI_LAYOUT(iommu_hw_info_vtd, 24, FM_F(flags, 0), FM_F(reserved, 4), FM_F(cap_reg, 8),
               FM_F(ecap_reg, 16))

struct iommu_hwpt_set_dirty_tracking {
  static constexpr const char kUapiName[] = "iommu_hwpt_set_dirty_tracking";
  u32 size;
  u32 flags;
  u32 hwpt_id;
  u32 reserved;
};
FM_UAPI_LAYOUT(iommu_hwpt_set_dirty_tracking, 16, FM_F(size, 0), FM_F(flags, 4),
               FM_F(hwpt_id, 8), FM_F(reserved, 12))

struct iommu_hwpt_get_dirty_bitmap {
  static constexpr const char kUapiName[] = "iommu_hwpt_get_dirty_bitmap";
  u32 size;
  u32 hwpt_id;
  u32 flags;
  u32 reserved;
  u64 iova;
  u64 length;
  u64 page_size;
  u64 data;  // user pointer to a u64 bitmap, LSB first
};
FM_UAPI_LAYOUT(iommu_hwpt_get_dirty_bitmap, 48, FM_F(size, 0), FM_F(hwpt_id, 4),
               FM_F(flags, 8), FM_F(reserved, 12), FM_F(iova, 16), FM_F(length, 24),
               FM_F(page_size, 32), FM_F(data, 40))

// IOMMU_HWPT_INVALIDATE: a batch of driver-defined cache invalidations for a nested HWPT
// or a vIOMMU. entry_num is in/out (entries done).
struct iommu_hwpt_invalidate {
  static constexpr const char kUapiName[] = "iommu_hwpt_invalidate";
  u32 size;
  u32 hwpt_id;
  u64 data_uptr;
  u32 data_type;
  u32 entry_len;
  u32 entry_num;
  u32 reserved;
};
FM_UAPI_LAYOUT(iommu_hwpt_invalidate, 32, FM_F(size, 0), FM_F(hwpt_id, 4),
               FM_F(data_uptr, 8), FM_F(data_type, 16), FM_F(entry_len, 20),
               FM_F(entry_num, 24), FM_F(reserved, 28))

// IOMMU_FAULT_QUEUE_ALLOC: a fault queue object plus the fd that delivers its faults.
struct iommu_fault_alloc {
  static constexpr const char kUapiName[] = "iommu_fault_alloc";
  u32 size;
  u32 flags;
  u32 out_fault_id;
  u32 out_fault_fd;
};
FM_UAPI_LAYOUT(iommu_fault_alloc, 16, FM_F(size, 0), FM_F(flags, 4), FM_F(out_fault_id, 8),
               FM_F(out_fault_fd, 12))

struct iommu_ioas_change_process {
  static constexpr const char kUapiName[] = "iommu_ioas_change_process";
  u32 size;
  u32 reserved;
};
FM_UAPI_LAYOUT(iommu_ioas_change_process, 8, FM_F(size, 0), FM_F(reserved, 4))

}  // namespace fastmap::uapi
