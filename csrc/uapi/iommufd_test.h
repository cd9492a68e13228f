// The iommufd selftest interface (drivers/iommu/iommufd/iommufd_test.h, 6.12), present only
// on kernels built with CONFIG_IOMMUFD_TEST. It gives mock devices with mock domains that
// support dirty tracking, which is how dirty tracking is tested on a real kernel.
#pragma once

#include "uapi/iommufd.h"

namespace fastmap::uapi {

inline constexpr unsigned long IOMMU_TEST_CMD = iommufd_io(IOMMUFD_CMD_BASE + 32);

inline constexpr u32 IOMMU_TEST_OP_ADD_RESERVED = 1;
inline constexpr u32 IOMMU_TEST_OP_MOCK_DOMAIN = 2;
inline constexpr u32 IOMMU_TEST_OP_MD_CHECK_MAP = 3;
inline constexpr u32 IOMMU_TEST_OP_MD_CHECK_REFS = 4;
inline constexpr u32 IOMMU_TEST_OP_CREATE_ACCESS = 5;
inline constexpr u32 IOMMU_TEST_OP_DESTROY_ACCESS_PAGES = 6;
inline constexpr u32 IOMMU_TEST_OP_ACCESS_PAGES = 7;
inline constexpr u32 IOMMU_TEST_OP_ACCESS_RW = 8;
inline constexpr u32 IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT = 9;
inline constexpr u32 IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE = 10;
inline constexpr u32 IOMMU_TEST_OP_ACCESS_REPLACE_IOAS = 11;
inline constexpr u32 IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS = 12;
inline constexpr u32 IOMMU_TEST_OP_DIRTY = 13;

inline constexpr u64 MOCK_APERTURE_START = 1ull << 24;
inline constexpr u64 MOCK_APERTURE_LAST = (1ull << 31) - 1;
inline constexpr u32 MOCK_FLAGS_DEVICE_NO_DIRTY = 1u << 0;
inline constexpr u32 MOCK_FLAGS_DEVICE_HUGE_IOVA = 1u << 1;
inline constexpr u32 IOMMU_HW_INFO_TYPE_SELFTEST = 0xfeedbeef;
inline constexpr u32 IOMMU_HW_INFO_SELFTEST_REGVAL = 0xdeadbeef;

struct iommu_test_add_reserved {
  static constexpr const char kUapiName[] = "iommu_test_add_reserved";
  u64 start;
  u64 length;
};
FM_UAPI_LAYOUT(iommu_test_add_reserved, 16, FM_F(start, 0), FM_F(length, 8))

struct iommu_test_mock_domain {
  static constexpr const char kUapiName[] = "iommu_test_mock_domain";
  u32 out_stdev_id;
  u32 out_hwpt_id;
  u32 out_idev_id;
};
FM_UAPI_LAYOUT(iommu_test_mock_domain, 12, FM_F(out_stdev_id, 0), FM_F(out_hwpt_id, 4),
               FM_F(out_idev_id, 8))

// mock_domain extended by dev_flags at the end (a 6.12 kernel writes out_idev_id at 8 and
// reads dev_flags at 12; checked in the VM).
struct iommu_test_mock_domain_flags {
  static constexpr const char kUapiName[] = "iommu_test_mock_domain_flags";
  u32 out_stdev_id;
  u32 out_hwpt_id;
  u32 out_idev_id;
  u32 dev_flags;
};
FM_UAPI_LAYOUT(iommu_test_mock_domain_flags, 16, FM_F(out_stdev_id, 0),
               FM_F(out_hwpt_id, 4), FM_F(out_idev_id, 8), FM_F(dev_flags, 12))

struct iommu_test_mock_domain_replace {
  static constexpr const char kUapiName[] = "iommu_test_mock_domain_replace";
  u32 pt_id;
};
FM_UAPI_LAYOUT(iommu_test_mock_domain_replace, 4, FM_F(pt_id, 0))

struct iommu_test_check_map {
  static constexpr const char kUapiName[] = "iommu_test_check_map";
  u64 iova;
  u64 length;
  u64 uptr;
};
FM_UAPI_LAYOUT(iommu_test_check_map, 24, FM_F(iova, 0), FM_F(length, 8), FM_F(uptr, 16))

struct iommu_test_dirty {
  static constexpr const char kUapiName[] = "iommu_test_dirty";
  u32 flags;
  u32 pad;  // implicit in the kernel header (__aligned_u64 follows)
  u64 iova;
  u64 length;
  u64 page_size;
  u64 uptr;
  u64 out_nr_dirty;
};
FM_UAPI_LAYOUT(iommu_test_dirty, 48, FM_F(flags, 0), FM_F(pad, 4), FM_F(iova, 8),
               FM_F(length, 16), FM_F(page_size, 24), FM_F(uptr, 32),
               FM_F(out_nr_dirty, 40))

// The payload union; its largest member (dirty) sets the size.
union iommu_test_cmd_payload {
  static constexpr const char kUapiName[] = "iommu_test_cmd_payload";
  iommu_test_add_reserved add_reserved;
  iommu_test_mock_domain mock_domain;
  iommu_test_mock_domain_flags mock_domain_flags;
  iommu_test_mock_domain_replace mock_domain_replace;
  iommu_test_check_map check_map;
  iommu_test_dirty dirty;
};
FM_UAPI_UNION_LAYOUT(iommu_test_cmd_payload, 48, FM_F(add_reserved, 0),
                     FM_F(mock_domain, 0), FM_F(mock_domain_flags, 0),
                     FM_F(mock_domain_replace, 0), FM_F(check_map, 0), FM_F(dirty, 0))

struct iommu_test_cmd {
  static constexpr const char kUapiName[] = "iommu_test_cmd";
  u32 size;
  u32 op;
  u32 id;
  u32 reserved;
  iommu_test_cmd_payload u;
  u32 last;
};
FM_UAPI_LAYOUT(iommu_test_cmd, 72, FM_F(size, 0), FM_F(op, 4), FM_F(id, 8),
               FM_F(reserved, 12), FM_F(u, 16), FM_F(last, 64))

}  // namespace fastmap::uapi
