#include "sim/iommufd/backing.h"

#include <algorithm>
#include <cstdio>

#include "sim/core/kernel_pin.h"
#include "sim/core/user_memory.h"

namespace fastmap::sim {

std::uint64_t backing_page_size(std::uint64_t va, std::uint64_t len, bool thp) noexcept {
  va = kernel_pin_origin(va);  // pages the host pinned: what backed them at their VA
  const std::uint64_t ps = host_page_size();
  if (len == 0) return ps;
  const std::uint64_t end = va + len;  // exclusive; callers never wrap
  std::FILE* f = std::fopen("/proc/self/smaps", "re");
  if (!f) return ps;
  char line[512];
  std::uint64_t result = ~0ull;
  std::uint64_t covered = va;  // everything below has been accounted for
  bool in_range = false;
  std::uint64_t kernel_page = ps;
  bool done = false;
  // A VMA's fields follow its header line; THPeligible comes after KernelPageSize.
  while (!done && std::fgets(line, sizeof line, f)) {
    unsigned long lo = 0, hi = 0;
    // Header lines start "lo-hi "; no field line parses as two hex numbers joined by '-'.
    if (std::sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {
      in_range = hi > covered && lo < end;
      if (in_range && lo > covered) {
        result = ps;  // a hole: not all of it is mapped
        done = true;
      }
      if (in_range) covered = std::max<std::uint64_t>(covered, hi);
      kernel_page = ps;
      continue;
    }
    if (!in_range) continue;
    unsigned long kb = 0;
    int eligible = 0;
    if (std::sscanf(line, "KernelPageSize: %lu kB", &kb) == 1) {
      kernel_page = kb * 1024;
    } else if (std::sscanf(line, "THPeligible: %d", &eligible) == 1) {
      std::uint64_t page = ps;
      if (kernel_page > ps) {
        page = kernel_page;  // hugetlbfs
      } else if (thp && eligible) {
        page = ps * (ps / 8);  // one PMD
      }
      result = std::min(result, page);
      if (covered >= end) done = true;
    }
  }
  std::fclose(f);
  if (covered < end || result == ~0ull) return ps;
  return result;
}

}  // namespace fastmap::sim
