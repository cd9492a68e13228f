// Simulated MMIO mappings: a device region mmap()ed into the process whose loads and stores
// reach the device model, as a real BAR mapping reaches the device's registers.
//
// The mapping is PROT_NONE memory. An access faults (SIGSEGV); the handler fills the page
// with what the registers read now (MmioTarget::fill: reads without side effects), opens
// the page, and single-steps the faulting instruction (the x86 trap flag, as Linux's
// mmiotrace does). At the trap (SIGTRAP) the page is closed again and what the instruction
// stored is handed to the device (MmioTarget::store): every register whose bytes changed,
// and for a store fault the register at the faulting address even when its value did not
// change (writing a register its current value still has its side effect).
//
// Limits, documented where region mmap is: x86-64 only; one instruction is handled at a
// time process-wide (the step holds a lock), and another thread touching the open page
// during that one instruction sees the filled page instead of faulting; a store that spans
// several registers is seen as the registers whose bytes changed (plus the first); a
// sub-register access reads the bytes of the whole register's value and writes the whole
// register; async signals stay blocked during the step. A debugger that owns SIGTRAP must
// pass it on. An access with memory decoding off raises SIGBUS, as vfio-pci's fault handler
// does.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace fastmap::sim {

class MmioTarget {
 public:
  virtual ~MmioTarget() = default;
  // The bytes [off, off+len) of the region as reads would return them now, without side
  // effects; false when the region does not answer (memory decoding off: SIGBUS).
  virtual bool fill(std::uint64_t off, std::uint8_t* dst, std::size_t len) noexcept = 0;
  // One instruction stored into the page at region offset `off`: `before` is what fill
  // gave, `after` what the page holds now; `fault_off` is the region offset of the faulting
  // store, or UINT64_MAX for a load.
  virtual void store(std::uint64_t off, const std::uint8_t* before, const std::uint8_t* after,
                     std::size_t len, std::uint64_t fault_off) noexcept = 0;
};

// Whether this build can trap MMIO (x86-64).
bool mmio_trap_supported() noexcept;

// Maps `length` bytes (page-aligned) of a region at `region_off` of `target`, at `addr` when
// MAP_FIXED is in `flags`, with the access `prot` allows. The address, or -errno.
long mmio_map(void* addr, std::size_t length, int prot, int flags,
              std::shared_ptr<MmioTarget> target, std::uint64_t region_off) noexcept;
// munmap() of [addr, addr+length), forgetting the MMIO mappings it covers: 0 or -errno.
int mmio_unmap(void* addr, std::size_t length) noexcept;
// Whether [addr, addr+length) overlaps an MMIO mapping.
bool mmio_mapped(const void* addr, std::size_t length) noexcept;

// The SIGSEGV/SIGTRAP parts of the fault handler (user_memory.cc): true when the signal was
// an MMIO access (or its single-step trap) and has been handled.
bool mmio_trap_handle(int sig, void* info, void* context) noexcept;

}  // namespace fastmap::sim
