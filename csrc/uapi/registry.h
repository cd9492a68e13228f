// Every uAPI struct's layout, in dependency order (nested types first), plus the named
// constants, for the Python mirrors and the header-conformance test.
#pragma once

#include <span>
#include <utility>

#include "uapi/iommufd.h"
#include "uapi/iommufd_test.h"
#include "uapi/vfio.h"
#include "uapi/vfio_migration.h"

namespace fastmap::uapi {

std::span<const StructInfo> all_structs();

struct Constant {
  const char* name;
  unsigned long long value;
};
std::span<const Constant> all_constants();

}  // namespace fastmap::uapi
