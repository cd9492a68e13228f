// Holding pinned user pages, as the kernel's page references do.
//
// On Linux a pinned page stays the page the device reaches whatever the process later does
// to the VA (munmap and a new mmap there, madvise(MADV_DONTNEED), fork). The simulator's
// "physical address" is a process VA, so it holds pages by owning a mapping of them:
//
// - MAP_SHARED memory (a memfd, a shared file, shared anonymous memory): the simulator
//   duplicates the mapping (mremap with old_size 0) and reaches the pages through its own
//   mapping, which outlives whatever the process does to the original VA. Exactly Linux.
//   One duplicate of a whole mapping serves every hold inside it (keyed by the file and
//   offset /proc/self/maps gives), so many small pins do not multiply the process's
//   mappings; it goes with the last hold.
// - MAP_PRIVATE memory (anonymous heap, numpy, bytearray): a private page cannot be mapped
//   a second time, so the simulator has the host kernel pin it (sim/core/kernel_pin.h) and
//   reaches it through io_uring fixed buffers: again exactly Linux, including the copy a
//   forked child gets. Where the host cannot pin (see there), it falls back to the
//   process's VA: the device then reaches whatever page the VA has at the time of the DMA.
#pragma once

#include <cstdint>
#include <memory>

#include "sim/core/kernel_pin.h"

namespace fastmap::sim {

class PageHold {
 public:
  struct Duplicate;

  PageHold() = default;
  // Hold the pages of [va, va+len) (page-aligned, already faulted in by the pin check).
  explicit PageHold(std::uint64_t va, std::uint64_t len) noexcept;
  ~PageHold() = default;
  PageHold(PageHold&&) noexcept = default;
  PageHold& operator=(PageHold&&) noexcept = default;
  PageHold(const PageHold&) = delete;
  PageHold& operator=(const PageHold&) = delete;

  // Where the simulator reaches the held pages: its own mapping, the shadow of a host
  // kernel pin, or the process VA.
  std::uint64_t addr() const noexcept { return addr_; }
  // The pages are held (by a mapping of the simulator's own, or by a host kernel pin).
  bool owned() const noexcept { return dup_ != nullptr || pin_ != nullptr; }

 private:
  std::uint64_t addr_ = 0;
  std::shared_ptr<const Duplicate> dup_;
  std::shared_ptr<const KernelPin> pin_;
};

}  // namespace fastmap::sim
