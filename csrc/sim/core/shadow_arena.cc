#include "sim/core/shadow_arena.h"

#include <sys/mman.h>

#include <algorithm>
#include <mutex>
#include <new>
#include <vector>

namespace fastmap::sim {

namespace {

constexpr std::uint64_t kChunk = 1ull << 34;  // one PROT_NONE reservation: 16 GiB of names
constexpr int kClasses = 64;

struct Arena {
  std::mutex mu;
  std::uint64_t next = 0, end = 0;        // the bump range of the current chunk
  std::vector<std::uint64_t> free[kClasses];  // freed blocks by log2 of their size
};

Arena& arena() {
  static auto* a = new Arena();  // shadows may be freed during exit: never destroyed
  return *a;
}

// The block holding a shadow: a power of two large enough that an aligned start fits.
int block_class(std::uint64_t len, std::uint64_t align) {
  std::uint64_t need = len + align;
  int c = 0;
  while ((1ull << c) < need) ++c;
  return c;
}

std::uint64_t reserve(std::uint64_t len) {
  void* m = ::mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return m == MAP_FAILED ? 0 : reinterpret_cast<std::uint64_t>(m);
}

// The start inside block `b` congruent with va modulo align.
std::uint64_t place(std::uint64_t b, std::uint64_t va, std::uint64_t align) {
  return align ? b + ((va - b) & (align - 1)) : b;
}

}  // namespace

std::uint64_t shadow_alloc(std::uint64_t va, std::uint64_t len, std::uint64_t align) noexcept {
  const int c = block_class(len, align);
  const std::uint64_t size = 1ull << c;
  Arena& a = arena();
  std::lock_guard<std::mutex> g(a.mu);
  if (!a.free[c].empty()) {
    const std::uint64_t b = a.free[c].back();
    a.free[c].pop_back();
    return place(b, va, align);
  }
  // Blocks are aligned to their size, so a block's start is recovered from the shadow's.
  std::uint64_t b = (a.next + size - 1) & ~(size - 1);
  if (!a.end || b + size > a.end) {
    // A new chunk, large enough for an aligned block; the rest of the old one is left.
    const std::uint64_t chunk = std::max(kChunk, 2 * size);
    const std::uint64_t base = reserve(chunk);
    if (!base) return 0;
    a.next = base;
    a.end = base + chunk;
    b = (a.next + size - 1) & ~(size - 1);
  }
  a.next = b + size;
  return place(b, va, align);
}

void shadow_free(std::uint64_t start, std::uint64_t len, std::uint64_t align) noexcept {
  const int c = block_class(len, align);
  const std::uint64_t b = start & ~((1ull << c) - 1);
  Arena& a = arena();
  std::lock_guard<std::mutex> g(a.mu);
  try {
    a.free[c].push_back(b);
  } catch (const std::bad_alloc&) {
    // The block is lost to reuse; the name stays reserved (PROT_NONE), so nothing breaks.
  }
}

}  // namespace fastmap::sim
