// How `sim-run --trace` shows an ioctl: its name, and the fields that tell what the call did,
// read through the uAPI structs' registered layouts (uapi/layout.h) rather than a
// hand-written decoder per request.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fastmap::preload {

// nullptr for a request it does not know. `on_device`: the fd is a VFIO device fd (a
// device's DEVICE_FEATURE and a container's IOMMU_DIRTY_PAGES share a number).
const char* ioctl_name(unsigned long request, bool on_device) noexcept;

// Writes " name=value ..." for `request`'s argument `arg` (in the caller's memory) into
// s[0..n); `ok`: the call succeeded, so what the kernel writes back is meaningful. Returns
// the length written.
int ioctl_fields(unsigned long request, std::uint64_t arg, bool ok, char* s,
                 std::size_t n) noexcept;

}  // namespace fastmap::preload
