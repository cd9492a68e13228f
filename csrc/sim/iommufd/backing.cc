#include "sim/iommufd/backing.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

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
    // Header lines start "lo-hi " in lowercase hex; field lines start with a capital.
    // Parsed by hand: sscanf on every line of every mapping dominated the user time.
    const char c0 = line[0];
    if ((c0 >= '0' && c0 <= '9') || (c0 >= 'a' && c0 <= 'f')) {
      char* rest = nullptr;
      const std::uint64_t lo = std::strtoull(line, &rest, 16);
      if (*rest != '-') continue;
      const std::uint64_t hi = std::strtoull(rest + 1, nullptr, 16);
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
    static constexpr char kKps[] = "KernelPageSize:";
    static constexpr char kThp[] = "THPeligible:";
    if (std::strncmp(line, kKps, sizeof kKps - 1) == 0) {
      kernel_page = std::strtoull(line + sizeof kKps - 1, nullptr, 10) * 1024;
    } else if (std::strncmp(line, kThp, sizeof kThp - 1) == 0) {
      const bool eligible = std::strtoul(line + sizeof kThp - 1, nullptr, 10) != 0;
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
