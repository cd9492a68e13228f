// VFIO uAPI (include/uapi/linux/vfio.h), LP64: the device cdev calls used with iommufd and
// the legacy Type1 container/group set. Layouts as of Linux 6.12.
#pragma once

#include "uapi/layout.h"

namespace fastmap::uapi {

inline constexpr u32 VFIO_TYPE = ';';
inline constexpr u32 VFIO_BASE = 100;
constexpr unsigned long vfio_io(u32 n) { return (VFIO_TYPE << 8) | (VFIO_BASE + n); }

inline constexpr unsigned long VFIO_GET_API_VERSION = vfio_io(0);
inline constexpr unsigned long VFIO_CHECK_EXTENSION = vfio_io(1);
inline constexpr unsigned long VFIO_SET_IOMMU = vfio_io(2);
inline constexpr unsigned long VFIO_GROUP_GET_STATUS = vfio_io(3);
inline constexpr unsigned long VFIO_GROUP_SET_CONTAINER = vfio_io(4);
inline constexpr unsigned long VFIO_GROUP_UNSET_CONTAINER = vfio_io(5);
inline constexpr unsigned long VFIO_GROUP_GET_DEVICE_FD = vfio_io(6);
inline constexpr unsigned long VFIO_DEVICE_GET_INFO = vfio_io(7);
inline constexpr unsigned long VFIO_DEVICE_GET_REGION_INFO = vfio_io(8);
inline constexpr unsigned long VFIO_DEVICE_GET_IRQ_INFO = vfio_io(9);
inline constexpr unsigned long VFIO_DEVICE_SET_IRQS = vfio_io(10);
inline constexpr unsigned long VFIO_DEVICE_RESET = vfio_io(11);
inline constexpr unsigned long VFIO_IOMMU_GET_INFO = vfio_io(12);
inline constexpr unsigned long VFIO_IOMMU_MAP_DMA = vfio_io(13);
inline constexpr unsigned long VFIO_IOMMU_UNMAP_DMA = vfio_io(14);
inline constexpr unsigned long VFIO_IOMMU_DIRTY_PAGES = vfio_io(17);
inline constexpr unsigned long VFIO_DEVICE_FEATURE = vfio_io(17);  // same nr, device fd
inline constexpr unsigned long VFIO_DEVICE_BIND_IOMMUFD = vfio_io(18);
inline constexpr unsigned long VFIO_DEVICE_ATTACH_IOMMUFD_PT = vfio_io(19);
inline constexpr unsigned long VFIO_DEVICE_DETACH_IOMMUFD_PT = vfio_io(20);

inline constexpr int VFIO_API_VERSION = 0;

// Extensions / IOMMU types.
inline constexpr u32 VFIO_TYPE1_IOMMU = 1;
inline constexpr u32 VFIO_SPAPR_TCE_IOMMU = 2;
inline constexpr u32 VFIO_TYPE1v2_IOMMU = 3;
inline constexpr u32 VFIO_DMA_CC_IOMMU = 4;
inline constexpr u32 VFIO_EEH = 5;
inline constexpr u32 VFIO_TYPE1_NESTING_IOMMU = 6;
inline constexpr u32 VFIO_SPAPR_TCE_v2_IOMMU = 7;
inline constexpr u32 VFIO_NOIOMMU_IOMMU = 8;
inline constexpr u32 VFIO_UNMAP_ALL = 9;
inline constexpr u32 VFIO_UPDATE_VADDR = 10;

inline constexpr u32 VFIO_GROUP_FLAGS_VIABLE = 1u << 0;
inline constexpr u32 VFIO_GROUP_FLAGS_CONTAINER_SET = 1u << 1;

inline constexpr u32 VFIO_DEVICE_FLAGS_RESET = 1u << 0;
inline constexpr u32 VFIO_DEVICE_FLAGS_PCI = 1u << 1;
inline constexpr u32 VFIO_DEVICE_FLAGS_CAPS = 1u << 7;

inline constexpr u32 VFIO_REGION_INFO_FLAG_READ = 1u << 0;
inline constexpr u32 VFIO_REGION_INFO_FLAG_WRITE = 1u << 1;
inline constexpr u32 VFIO_REGION_INFO_FLAG_MMAP = 1u << 2;
inline constexpr u32 VFIO_REGION_INFO_FLAG_CAPS = 1u << 3;

// vfio-pci region indexes.
inline constexpr u32 VFIO_PCI_BAR0_REGION_INDEX = 0;
inline constexpr u32 VFIO_PCI_BAR5_REGION_INDEX = 5;
inline constexpr u32 VFIO_PCI_ROM_REGION_INDEX = 6;
inline constexpr u32 VFIO_PCI_CONFIG_REGION_INDEX = 7;
inline constexpr u32 VFIO_PCI_VGA_REGION_INDEX = 8;
inline constexpr u32 VFIO_PCI_NUM_REGIONS = 9;
inline constexpr u32 VFIO_PCI_NUM_IRQS = 5;  // INTX, MSI, MSIX, ERR, REQ
inline constexpr u32 VFIO_PCI_INTX_IRQ_INDEX = 0;
inline constexpr u32 VFIO_PCI_MSI_IRQ_INDEX = 1;
inline constexpr u32 VFIO_PCI_MSIX_IRQ_INDEX = 2;
inline constexpr u32 VFIO_PCI_ERR_IRQ_INDEX = 3;
inline constexpr u32 VFIO_PCI_REQ_IRQ_INDEX = 4;

inline constexpr u32 VFIO_IRQ_INFO_EVENTFD = 1u << 0;
inline constexpr u32 VFIO_IRQ_INFO_MASKABLE = 1u << 1;
inline constexpr u32 VFIO_IRQ_INFO_AUTOMASKED = 1u << 2;
inline constexpr u32 VFIO_IRQ_INFO_NORESIZE = 1u << 3;

// VFIO_DEVICE_SET_IRQS flags: one data type and one action.
inline constexpr u32 VFIO_IRQ_SET_DATA_NONE = 1u << 0;
inline constexpr u32 VFIO_IRQ_SET_DATA_BOOL = 1u << 1;
inline constexpr u32 VFIO_IRQ_SET_DATA_EVENTFD = 1u << 2;
inline constexpr u32 VFIO_IRQ_SET_ACTION_MASK = 1u << 3;
inline constexpr u32 VFIO_IRQ_SET_ACTION_UNMASK = 1u << 4;
inline constexpr u32 VFIO_IRQ_SET_ACTION_TRIGGER = 1u << 5;
inline constexpr u32 VFIO_IRQ_SET_DATA_TYPE_MASK =
    VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD;
inline constexpr u32 VFIO_IRQ_SET_ACTION_TYPE_MASK =
    VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK | VFIO_IRQ_SET_ACTION_TRIGGER;

// Region info capability ids (vfio_info_cap_header.id in a region's chain).
inline constexpr u32 VFIO_REGION_INFO_CAP_SPARSE_MMAP = 1;
inline constexpr u32 VFIO_REGION_INFO_CAP_TYPE = 2;
inline constexpr u32 VFIO_REGION_INFO_CAP_MSIX_MAPPABLE = 3;

// VFIO_DEVICE_FEATURE flags: the low 16 bits name the feature.
inline constexpr u32 VFIO_DEVICE_FEATURE_MASK = 0xffff;
inline constexpr u32 VFIO_DEVICE_FEATURE_GET = 1u << 16;
inline constexpr u32 VFIO_DEVICE_FEATURE_SET = 1u << 17;
inline constexpr u32 VFIO_DEVICE_FEATURE_PROBE = 1u << 18;

inline constexpr u32 VFIO_IOMMU_INFO_PGSIZES = 1u << 0;
inline constexpr u32 VFIO_IOMMU_INFO_CAPS = 1u << 1;
inline constexpr u16 VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1;
inline constexpr u16 VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION = 2;
inline constexpr u16 VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3;

inline constexpr u32 VFIO_DMA_MAP_FLAG_READ = 1u << 0;
inline constexpr u32 VFIO_DMA_MAP_FLAG_WRITE = 1u << 1;
inline constexpr u32 VFIO_DMA_MAP_FLAG_VADDR = 1u << 2;
inline constexpr u32 VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1u << 0;
inline constexpr u32 VFIO_DMA_UNMAP_FLAG_ALL = 1u << 1;
inline constexpr u32 VFIO_DMA_UNMAP_FLAG_VADDR = 1u << 2;

inline constexpr u32 VFIO_IOMMU_DIRTY_PAGES_FLAG_START = 1u << 0;
inline constexpr u32 VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP = 1u << 1;
inline constexpr u32 VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP = 1u << 2;

struct vfio_device_info {
  static constexpr const char kUapiName[] = "vfio_device_info";
  u32 argsz;
  u32 flags;
  u32 num_regions;
  u32 num_irqs;
  u32 cap_offset;
  u32 pad;
};
FM_UAPI_LAYOUT(vfio_device_info, 24, FM_F(argsz, 0), FM_F(flags, 4), FM_F(num_regions, 8),
               FM_F(num_irqs, 12), FM_F(cap_offset, 16), FM_F(pad, 20))

struct vfio_region_info {
  static constexpr const char kUapiName[] = "vfio_region_info";
  u32 argsz;
  u32 flags;
  u32 index;
  u32 cap_offset;
  u64 size;
  u64 offset;  // where pread/pwrite/mmap reach the region on the device fd
};
FM_UAPI_LAYOUT(vfio_region_info, 32, FM_F(argsz, 0), FM_F(flags, 4), FM_F(index, 8),
               FM_F(cap_offset, 12), FM_F(size, 16), FM_F(offset, 24))

struct vfio_irq_info {
  static constexpr const char kUapiName[] = "vfio_irq_info";
  u32 argsz;
  u32 flags;
  u32 index;
  u32 count;
};
FM_UAPI_LAYOUT(vfio_irq_info, 16, FM_F(argsz, 0), FM_F(flags, 4), FM_F(index, 8),
               FM_F(count, 12))

// Followed by `count` items of the data type (u8 bools or s32 eventfds).
struct vfio_irq_set {
  static constexpr const char kUapiName[] = "vfio_irq_set";
  u32 argsz;
  u32 flags;
  u32 index;
  u32 start;
  u32 count;
};
FM_UAPI_LAYOUT(vfio_irq_set, 20, FM_F(argsz, 0), FM_F(flags, 4), FM_F(index, 8),
               FM_F(start, 12), FM_F(count, 16))

// Followed by the feature's data.
struct vfio_device_feature {
  static constexpr const char kUapiName[] = "vfio_device_feature";
  u32 argsz;
  u32 flags;
};
FM_UAPI_LAYOUT(vfio_device_feature, 8, FM_F(argsz, 0), FM_F(flags, 4))

struct vfio_device_bind_iommufd {
  static constexpr const char kUapiName[] = "vfio_device_bind_iommufd";
  u32 argsz;
  u32 flags;
  s32 iommufd;
  u32 out_devid;
};
FM_UAPI_LAYOUT(vfio_device_bind_iommufd, 16, FM_F(argsz, 0), FM_F(flags, 4),
               FM_F(iommufd, 8), FM_F(out_devid, 12))

struct vfio_device_attach_iommufd_pt {
  static constexpr const char kUapiName[] = "vfio_device_attach_iommufd_pt";
  u32 argsz;
  u32 flags;
  u32 pt_id;  // in: an IOAS or HWPT id; out: the HWPT actually attached
};
FM_UAPI_LAYOUT(vfio_device_attach_iommufd_pt, 12, FM_F(argsz, 0), FM_F(flags, 4),
               FM_F(pt_id, 8))

struct vfio_device_detach_iommufd_pt {
  static constexpr const char kUapiName[] = "vfio_device_detach_iommufd_pt";
  u32 argsz;
  u32 flags;
};
FM_UAPI_LAYOUT(vfio_device_detach_iommufd_pt, 8, FM_F(argsz, 0), FM_F(flags, 4))

struct vfio_group_status {
  static constexpr const char kUapiName[] = "vfio_group_status";
  u32 argsz;
  u32 flags;
};
FM_UAPI_LAYOUT(vfio_group_status, 8, FM_F(argsz, 0), FM_F(flags, 4))

struct vfio_info_cap_header {
  static constexpr const char kUapiName[] = "vfio_info_cap_header";
  u16 id;
  u16 version;
  u32 next;  // offset of the next header from the start of the info struct; 0 ends
};
FM_UAPI_LAYOUT(vfio_info_cap_header, 8, FM_F(id, 0), FM_F(version, 2), FM_F(next, 4))

struct vfio_region_sparse_mmap_area {
  static constexpr const char kUapiName[] = "vfio_region_sparse_mmap_area";
  u64 offset;  // from the start of the region
  u64 size;
};
FM_UAPI_LAYOUT(vfio_region_sparse_mmap_area, 16, FM_F(offset, 0), FM_F(size, 8))

// Followed by nr_areas vfio_region_sparse_mmap_area.
struct vfio_region_info_cap_sparse_mmap {
  static constexpr const char kUapiName[] = "vfio_region_info_cap_sparse_mmap";
  vfio_info_cap_header header;
  u32 nr_areas;
  u32 reserved;
};
FM_UAPI_LAYOUT(vfio_region_info_cap_sparse_mmap, 16, FM_F(header, 0), FM_F(nr_areas, 8),
               FM_F(reserved, 12))

struct vfio_iommu_type1_info {
  static constexpr const char kUapiName[] = "vfio_iommu_type1_info";
  u32 argsz;
  u32 flags;
  u64 iova_pgsizes;
  u32 cap_offset;
  u32 pad;
};
FM_UAPI_LAYOUT(vfio_iommu_type1_info, 24, FM_F(argsz, 0), FM_F(flags, 4),
               FM_F(iova_pgsizes, 8), FM_F(cap_offset, 16), FM_F(pad, 20))

// end is inclusive.
struct vfio_iova_range {
  static constexpr const char kUapiName[] = "vfio_iova_range";
  u64 start;
  u64 end;
};
FM_UAPI_LAYOUT(vfio_iova_range, 16, FM_F(start, 0), FM_F(end, 8))

// Followed by nr_iovas vfio_iova_range entries.
struct vfio_iommu_type1_info_cap_iova_range {
  static constexpr const char kUapiName[] = "vfio_iommu_type1_info_cap_iova_range";
  vfio_info_cap_header header;
  u32 nr_iovas;
  u32 reserved;
};
FM_UAPI_LAYOUT(vfio_iommu_type1_info_cap_iova_range, 16, FM_F(header, 0),
               FM_F(nr_iovas, 8), FM_F(reserved, 12))

struct vfio_iommu_type1_info_cap_migration {
  static constexpr const char kUapiName[] = "vfio_iommu_type1_info_cap_migration";
  vfio_info_cap_header header;
  u32 flags;
  u32 pad;
  u64 pgsize_bitmap;
  u64 max_dirty_bitmap_size;
};
FM_UAPI_LAYOUT(vfio_iommu_type1_info_cap_migration, 32, FM_F(header, 0), FM_F(flags, 8),
               FM_F(pad, 12), FM_F(pgsize_bitmap, 16), FM_F(max_dirty_bitmap_size, 24))

struct vfio_iommu_type1_info_dma_avail {
  static constexpr const char kUapiName[] = "vfio_iommu_type1_info_dma_avail";
  vfio_info_cap_header header;
  u32 avail;
};
FM_UAPI_LAYOUT(vfio_iommu_type1_info_dma_avail, 12, FM_F(header, 0), FM_F(avail, 8))

struct vfio_iommu_type1_dma_map {
  static constexpr const char kUapiName[] = "vfio_iommu_type1_dma_map";
  u32 argsz;
  u32 flags;
  u64 vaddr;
  u64 iova;
  u64 size;
};
FM_UAPI_LAYOUT(vfio_iommu_type1_dma_map, 32, FM_F(argsz, 0), FM_F(flags, 4),
               FM_F(vaddr, 8), FM_F(iova, 16), FM_F(size, 24))

struct vfio_bitmap {
  static constexpr const char kUapiName[] = "vfio_bitmap";
  u64 pgsize;
  u64 size;  // bytes
  u64 data;  // user pointer
};
FM_UAPI_LAYOUT(vfio_bitmap, 24, FM_F(pgsize, 0), FM_F(size, 8), FM_F(data, 16))

// Followed, with GET_DIRTY_BITMAP, by a vfio_bitmap.
struct vfio_iommu_type1_dma_unmap {
  static constexpr const char kUapiName[] = "vfio_iommu_type1_dma_unmap";
  u32 argsz;
  u32 flags;
  u64 iova;
  u64 size;
};
FM_UAPI_LAYOUT(vfio_iommu_type1_dma_unmap, 24, FM_F(argsz, 0), FM_F(flags, 4),
               FM_F(iova, 8), FM_F(size, 16))

// Followed, with GET_BITMAP, by a vfio_iommu_type1_dirty_bitmap_get.
struct vfio_iommu_type1_dirty_bitmap {
  static constexpr const char kUapiName[] = "vfio_iommu_type1_dirty_bitmap";
  u32 argsz;
  u32 flags;
};
FM_UAPI_LAYOUT(vfio_iommu_type1_dirty_bitmap, 8, FM_F(argsz, 0), FM_F(flags, 4))

struct vfio_iommu_type1_dirty_bitmap_get {
  static constexpr const char kUapiName[] = "vfio_iommu_type1_dirty_bitmap_get";
  u64 iova;
  u64 size;
  vfio_bitmap bitmap;
};
FM_UAPI_LAYOUT(vfio_iommu_type1_dirty_bitmap_get, 40, FM_F(iova, 0), FM_F(size, 8),
               FM_F(bitmap, 16))

}  // namespace fastmap::uapi
