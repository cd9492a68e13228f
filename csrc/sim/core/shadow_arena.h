// Address ranges for kernel pins' shadows (kernel_pin.h), carved from a few large PROT_NONE
// reservations: a pin costs no mmap/munmap of its own, and the process does not gain a
// mapping per pin (each would be walked by every /proc/self/smaps read, backing.h).
//
// A shadow only names pinned pages inside the simulator: nothing is ever mapped there, so
// any direct access faults (as an unmapped address would) and the user-memory accessors
// route it to the pin. Shadows come in power-of-two blocks aligned to their size, reused
// per size.
#pragma once

#include <cstdint>

namespace fastmap::sim {

// A shadow of `len` bytes (page-aligned) whose start is congruent with `va` modulo `align`
// (a power of two, or 0 for none). 0 if there is no address space left.
std::uint64_t shadow_alloc(std::uint64_t va, std::uint64_t len, std::uint64_t align) noexcept;
// Give back a shadow from shadow_alloc with the same len and align.
void shadow_free(std::uint64_t start, std::uint64_t len, std::uint64_t align) noexcept;

}  // namespace fastmap::sim
