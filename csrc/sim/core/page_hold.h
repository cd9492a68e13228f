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
// - MAP_PRIVATE memory (anonymous heap, numpy, bytearray): an unprivileged process cannot
//   map a private page a second time, so the simulator reaches it through the process's
//   VA: as long as the VA keeps its page (including fork, where the parent keeps it) the
//   device and the process see the same bytes, as on Linux; after munmap + mmap or
//   MADV_DONTNEED at that VA the device reaches the new page there, where Linux would keep
//   writing the old one. docs/architecture.md lists this limit.
#pragma once

#include <cstdint>
#include <memory>

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

  // Where the simulator reaches the held pages: its own mapping, or the process VA.
  std::uint64_t addr() const noexcept { return addr_; }
  // The pages are held by a mapping of the simulator's own (the range is MAP_SHARED).
  bool owned() const noexcept { return dup_ != nullptr; }

 private:
  std::uint64_t addr_ = 0;
  std::shared_ptr<const Duplicate> dup_;
};

}  // namespace fastmap::sim
