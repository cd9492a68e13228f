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
inline constexpr u32 IOMMU_TEST_OP_MD_CHECK_IOTLB = 14;
inline constexpr u32 IOMMU_TEST_OP_TRIGGER_IOPF = 15;

inline constexpr u64 MOCK_APERTURE_START = 1ull << 24;
inline constexpr u64 MOCK_APERTURE_LAST = (1ull << 31) - 1;
inline constexpr u32 MOCK_FLAGS_DEVICE_NO_DIRTY = 1u << 0;
inline constexpr u32 MOCK_FLAGS_DEVICE_HUGE_IOVA = 1u << 1;
inline constexpr u32 MOCK_FLAGS_ACCESS_WRITE = 1u << 0;
inline constexpr u32 MOCK_FLAGS_ACCESS_SYZ = 1u << 16;
inline constexpr u32 MOCK_ACCESS_RW_WRITE = 1u << 0;
inline constexpr u32 MOCK_ACCESS_RW_SLOW_PATH = 1u << 2;
inline constexpr u32 MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES = 1u << 0;
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

struct iommu_test_check_refs {
  static constexpr const char kUapiName[] = "iommu_test_check_refs";
  u64 length;
  u64 uptr;
  u32 refs;
  u32 pad;  // implicit (the struct is 8-aligned)
};
FM_UAPI_LAYOUT(iommu_test_check_refs, 24, FM_F(length, 0), FM_F(uptr, 8), FM_F(refs, 16),
               FM_F(pad, 20))

struct iommu_test_create_access {
  static constexpr const char kUapiName[] = "iommu_test_create_access";
  u32 out_access_fd;
  u32 flags;
};
FM_UAPI_LAYOUT(iommu_test_create_access, 8, FM_F(out_access_fd, 0), FM_F(flags, 4))

struct iommu_test_destroy_access_pages {
  static constexpr const char kUapiName[] = "iommu_test_destroy_access_pages";
  u32 access_pages_id;
};
FM_UAPI_LAYOUT(iommu_test_destroy_access_pages, 4, FM_F(access_pages_id, 0))

struct iommu_test_access_pages {
  static constexpr const char kUapiName[] = "iommu_test_access_pages";
  u32 flags;
  u32 out_access_pages_id;
  u64 iova;
  u64 length;
  u64 uptr;
};
FM_UAPI_LAYOUT(iommu_test_access_pages, 32, FM_F(flags, 0), FM_F(out_access_pages_id, 4),
               FM_F(iova, 8), FM_F(length, 16), FM_F(uptr, 24))

struct iommu_test_access_rw {
  static constexpr const char kUapiName[] = "iommu_test_access_rw";
  u64 iova;
  u64 length;
  u64 uptr;
  u32 flags;
  u32 pad;  // implicit
};
FM_UAPI_LAYOUT(iommu_test_access_rw, 32, FM_F(iova, 0), FM_F(length, 8), FM_F(uptr, 16),
               FM_F(flags, 24), FM_F(pad, 28))

struct iommu_test_memory_limit {
  static constexpr const char kUapiName[] = "iommu_test_memory_limit";
  u32 limit;
};
FM_UAPI_LAYOUT(iommu_test_memory_limit, 4, FM_F(limit, 0))

struct iommu_test_access_replace_ioas {
  static constexpr const char kUapiName[] = "iommu_test_access_replace_ioas";
  u32 ioas_id;
};
FM_UAPI_LAYOUT(iommu_test_access_replace_ioas, 4, FM_F(ioas_id, 0))

// The payload union; its largest member (dirty) sets the size.
union iommu_test_cmd_payload {
  static constexpr const char kUapiName[] = "iommu_test_cmd_payload";
  iommu_test_add_reserved add_reserved;
  iommu_test_mock_domain mock_domain;
  iommu_test_mock_domain_flags mock_domain_flags;
  iommu_test_mock_domain_replace mock_domain_replace;
  iommu_test_check_map check_map;
  iommu_test_dirty dirty;
  iommu_test_check_refs check_refs;
  iommu_test_create_access create_access;
  iommu_test_destroy_access_pages destroy_access_pages;
  iommu_test_access_pages access_pages;
  iommu_test_access_rw access_rw;
  iommu_test_memory_limit memory_limit;
  iommu_test_access_replace_ioas access_replace_ioas;
};
FM_UAPI_UNION_LAYOUT(iommu_test_cmd_payload, 48, FM_F(add_reserved, 0),
                     FM_F(mock_domain, 0), FM_F(mock_domain_flags, 0),
                     FM_F(mock_domain_replace, 0), FM_F(check_map, 0), FM_F(dirty, 0),
                     FM_F(check_refs, 0), FM_F(create_access, 0),
                     FM_F(destroy_access_pages, 0), FM_F(access_pages, 0),
                     FM_F(access_rw, 0), FM_F(memory_limit, 0),
                     FM_F(access_replace_ioas, 0))

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
