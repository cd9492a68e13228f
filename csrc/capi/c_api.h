// The C-level API table (capi/fastmap_capi.h, installed with the package) over IoasMapper.
#pragma once

#include "capi/fastmap_capi.h"

namespace fastmap::engine {

const fastmap_capi* c_api() noexcept;

}  // namespace fastmap::engine
