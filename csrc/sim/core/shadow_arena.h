// Address ranges for kernel pins' shadows (kernel_pin.h), carved from large PROT_NONE
// reservations so that a small pin costs no mmap/munmap of its own.
//
// A shadow only names pinned pages inside the simulator: nothing is ever mapped there, so
// any direct access faults (as an unmapped address would) and the user-memory accessors
// route it to the pin. Small shadows come from the arena in power-of-two blocks, reused
// per size; shadows larger than kArenaMax get a reservation of their own.
#pragma once

#include <cstdint>

namespace fastmap::sim {

// The largest shadow the arena serves (larger pins are dominated by pinning itself).
constexpr std::uint64_t kArenaMax = 1ull << 20;

// A shadow of `len` bytes (page-aligned) whose start is congruent with `va` modulo `align`
// (a power of two, or 0 for none). 0 if there is no address space left.
std::uint64_t shadow_alloc(std::uint64_t va, std::uint64_t len, std::uint64_t align) noexcept;
// Give back a shadow from shadow_alloc with the same len and align.
void shadow_free(std::uint64_t start, std::uint64_t len, std::uint64_t align) noexcept;

}  // namespace fastmap::sim
