// The selftest's access ops (access.cc), dispatched from IOMMU_TEST_CMD (selftest.cc).
#pragma once

#include "sim/iommufd/ucmd.h"
#include "uapi/iommufd_test.h"

namespace fastmap::sim {

int selftest_create_access(Ucmd& u, uapi::iommu_test_cmd& cmd);
int selftest_access_replace_ioas(Ucmd& u, uapi::iommu_test_cmd& cmd);
int selftest_access_pages(Ucmd& u, uapi::iommu_test_cmd& cmd);
int selftest_destroy_access_pages(Ucmd& u, uapi::iommu_test_cmd& cmd);
int selftest_access_rw(Ucmd& u, uapi::iommu_test_cmd& cmd);

}  // namespace fastmap::sim
