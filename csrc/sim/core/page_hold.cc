#include "sim/core/page_hold.h"

#include <sys/mman.h>

#include <cstdio>
#include <utility>

namespace fastmap::sim {

namespace {

// [va, va+len) lies inside one mapping (mremap's duplicate extends past the end of a
// mapping into its file instead of failing, so this is checked first). /proc/self/maps is
// read only for shared ranges: private ones are refused by mremap before this.
bool in_one_mapping(std::uint64_t va, std::uint64_t len) {
  std::FILE* f = std::fopen("/proc/self/maps", "re");
  if (f == nullptr) return false;
  bool ok = false;
  unsigned long long lo = 0, hi = 0;
  char line[4096];
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (std::sscanf(line, "%llx-%llx", &lo, &hi) != 2) continue;
    if (va >= lo && va < hi) {
      ok = va + len <= hi;
      break;
    }
  }
  std::fclose(f);
  return ok;
}

}  // namespace

PageHold::PageHold(std::uint64_t va, std::uint64_t len) noexcept : addr_(va), len_(len) {
  // Shared memory only: the kernel refuses to "duplicate" a private mapping (EINVAL).
  void* dup = ::mremap(reinterpret_cast<void*>(va), 0, len, MREMAP_MAYMOVE);
  if (dup == MAP_FAILED) return;
  if (!in_one_mapping(va, len)) {
    ::munmap(dup, len);
    return;
  }
  addr_ = reinterpret_cast<std::uint64_t>(dup);
  owned_ = true;
}

PageHold::~PageHold() { release(); }

PageHold::PageHold(PageHold&& other) noexcept
    : addr_(std::exchange(other.addr_, 0)),
      len_(std::exchange(other.len_, 0)),
      owned_(std::exchange(other.owned_, false)) {}

PageHold& PageHold::operator=(PageHold&& other) noexcept {
  if (this != &other) {
    release();
    addr_ = std::exchange(other.addr_, 0);
    len_ = std::exchange(other.len_, 0);
    owned_ = std::exchange(other.owned_, false);
  }
  return *this;
}

void PageHold::release() noexcept {
  if (owned_) ::munmap(reinterpret_cast<void*>(addr_), len_);
  owned_ = false;
}

}  // namespace fastmap::sim
