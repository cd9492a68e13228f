// The C-level API table (src/fastmap/fastmap_capi.h) over IoasMapper.
#pragma once

#include "fastmap_capi.h"

namespace fastmap::engine {

const fastmap_capi* c_api() noexcept;

}  // namespace fastmap::engine
