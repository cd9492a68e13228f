// Private anonymous pages pinned by the host kernel itself, as iommufd pins them.
//
// An unprivileged process cannot map a private page a second time, so the simulator asks
// the host kernel to pin it: io_uring's fixed buffers take a FOLL_PIN|FOLL_LONGTERM
// reference to exactly the pages iommufd would pin, and the host kernel then treats them
// as Linux treats DMA-pinned pages: munmap or MADV_DONTNEED at the VA leave the pinned page
// alive (the VA gets a new one), and fork() gives the child a copy while the parent keeps
// the pinned page. The simulator reaches the pinned pages through io_uring's READ_FIXED and
// WRITE_FIXED against a staging memfd, never through the VA.
//
// Each pin gets a "shadow" address range (from the PROT_NONE arena, shadow_arena.h),
// congruent with the original VA modulo the largest IOPTE that fits (so IOPTE sizes come
// out as for the VA), that names the pinned pages inside the simulator. The user-memory accessors
// (user_memory.h) route any access to a shadow range here. When the host cannot pin (no
// io_uring, the memlock limit for an unprivileged process, a read-only mapping, 16384
// slots in use), pin() returns null and the caller reaches the pages through the VA.
//
// A forked child reaches the pins made before the fork through its parent's ring (the ring
// memory and staging file are shared, used one process at a time): its DMA reaches the
// parent's pinned pages, as on Linux where the child shares the iommufd. It pins in a ring
// of its own, and only the process that registered a buffer unregisters it; a slot freed
// after a fork is cleared but never reused, so a child's stale copy of a pin faults
// rather than reaching another pin's pages.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace fastmap::sim {

class KernelPin {
 public:
  // Pin [va, va+len) (page-aligned, already faulted in and writable). Null if the host
  // cannot; never throws.
  static std::shared_ptr<const KernelPin> pin(std::uint64_t va, std::uint64_t len) noexcept;

  KernelPin(const KernelPin&) = delete;
  KernelPin& operator=(const KernelPin&) = delete;
  ~KernelPin();

  std::uint64_t shadow() const noexcept { return shadow_; }
  std::uint64_t va() const noexcept { return va_; }
  std::uint64_t len() const noexcept { return len_; }

  struct Impl;

 private:
  KernelPin() = default;
  std::uint64_t shadow_ = 0;
  std::uint64_t va_ = 0;
  std::uint64_t len_ = 0;
  std::vector<std::uint32_t> slots_;  // fixed-buffer slots, one per GiB
  void* ring_ = nullptr;                // the ring they are registered in (kernel_pin.cc)
  int owner_ = 0;                       // the process that registered them
  friend struct Impl;
};

// Within the outermost batch on a thread, pins this process released give their slots
// back to the host together when the batch ends (one io_uring update per run of slots)
// rather than one system call each. For one ioctl that unmaps many areas: the host pins
// are all gone by the time it returns, as on Linux.
class KernelPinBatch {
 public:
  KernelPinBatch() noexcept;
  ~KernelPinBatch();
  KernelPinBatch(const KernelPinBatch&) = delete;
  KernelPinBatch& operator=(const KernelPinBatch&) = delete;

 private:
  bool outer_ = false;
  void* ring_ = nullptr;  // this process's own ring (kernel_pin.cc)
  std::vector<std::uint32_t> slots_;
};

// Whether any kernel pin is alive (one relaxed load: the accessors' fast path).
bool kernel_pins_alive() noexcept;

// The user-memory accessors for an address range that may hold shadow ranges: the parts
// inside one are moved through the ring, the rest by `plain` (the ordinary accessor).
// `op` is kRead (to buf), kWrite (from buf), kZero or kCheck (the pages are there).
enum class PinOp { kRead, kWrite, kZero, kCheck };
using PlainAccess = int (*)(PinOp op, std::uint64_t addr, char* buf, std::size_t len,
                            bool write_check) noexcept;
int kernel_pin_access(PinOp op, std::uint64_t addr, char* buf, std::size_t len,
                      bool write_check, PlainAccess plain) noexcept;

// The process VA a shadow address stands for (addr itself when it is not in a shadow).
std::uint64_t kernel_pin_origin(std::uint64_t addr) noexcept;

}  // namespace fastmap::sim
