// FASTMAP_SIM_TRACE=FILE: sim-run writes each simulated call the program makes to FILE, in
// order, one line each (opens, closes, ioctls with their main fields decoded, mmaps, sysfs
// reads), so a VMM's path through the uAPI can be read next to its source. Region
// reads/writes (every guest config or BAR access) are only counted, in a summary line
// written at exit.
#pragma once

#include "preload/preload.h"

namespace fastmap::preload {

bool trace_enabled() noexcept;
// The trace file's fd, or -1. It sits high (below 1024) so that it takes no number the
// program expects to get next, and the program's close and close_range leave it alone.
int trace_fd() noexcept;
// After `call` returned `result` in this process (the caller's memory is readable).
void trace_call(const Call& call, const Result& result, const char* buf) noexcept;

}  // namespace fastmap::preload
