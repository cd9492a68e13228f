// Automatic IOVA allocation (iopt_alloc_iova), first fit from the bottom.
//
// The alignment keeps the low bits of the caller's address (VA, file offset or the source
// VA of a copy) so huge IOPTEs stay possible, capped at HPAGE_SIZE with transparent
// hugepages (else PAGE_SIZE), and the VA's offset in its page is OR-ed into every
// candidate. Candidates are the allowed ranges clipped to [PAGE_SIZE, ULONG_MAX-PAGE_SIZE]
// (the whole clip when none are set), and inside each the holes between reserved ranges
// and areas, lowest first. A hole is taken when its aligned start does not overflow, lies
// strictly below the hole's last byte, and leaves room for `length` bytes (the overflow-
// checked rule from "iommufd: Prevent ALIGN() overflow").
#include <algorithm>
#include <bit>
#include <cerrno>
#include <limits>

#include "sim/iommufd/ctx.h"
#include "sim/iommufd/io_pagetable.h"
#include "sim/core/user_memory.h"

namespace fastmap::sim {

namespace {

constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();

// __alloc_iova_check_range: move *start up to the aligned candidate when it fits.
bool check_range(std::uint64_t* start, std::uint64_t last, std::uint64_t length,
                 std::uint64_t align, std::uint64_t page_offset) {
  if (*start > kMax - (align - 1)) return false;
  std::uint64_t aligned = ((*start + (align - 1)) & ~(align - 1)) | page_offset;
  if (aligned >= last || last - aligned < length - 1) return false;
  *start = aligned;
  return true;
}

}  // namespace

// Calls fn(first, last) for each maximal hole of (reserved ∪ areas) inside [start, last],
// lowest first, until fn returns true. Returns whether fn stopped the walk. The gaps
// between areas come from free_; the (few, possibly overlapping) reserved ranges are cut
// out of each gap. Areas and reservations never intersect, so the pieces are maximal.
template <class F>
bool IoPagetable::for_each_hole(std::uint64_t start, std::uint64_t last, F&& fn) const {
  const std::vector<IovaSpan> used = reserved_union();
  std::size_t ri = 0;
  auto it = free_.upper_bound(start);
  if (it != free_.begin() && std::prev(it)->second >= start) --it;
  for (; it != free_.end() && it->first <= last; ++it) {
    std::uint64_t cur = std::max(it->first, start);
    const std::uint64_t gap_last = std::min(it->second, last);
    if (cur > gap_last) continue;
    while (ri < used.size() && used[ri].last < cur) ++ri;
    bool open = true;
    for (std::size_t k = ri; k < used.size() && used[k].start <= gap_last; ++k) {
      if (used[k].start > cur && fn(cur, used[k].start - 1)) return true;
      if (used[k].last >= gap_last) {
        open = false;
        break;
      }
      cur = std::max(cur, used[k].last + 1);
    }
    if (open && fn(cur, gap_last)) return true;
  }
  return false;
}

int IoPagetable::alloc_iova(std::uint64_t addr, std::uint64_t length,
                            std::uint64_t* iova) const {
  const std::uint64_t ps = host_page_size();
  const std::uint64_t page_offset = addr % ps;
  // Keeps roundup_pow_of_two() from overflowing.
  if (length == 0 || length >= kMax / 2) return -EOVERFLOW;

  std::uint64_t align = std::bit_ceil(length);
  if (addr) align = std::min(align, addr & -addr);  // lowest set bit of addr
  // HPAGE_SIZE is one PMD: PAGE_SIZE times the PAGE_SIZE/8 entries of a page table page.
  const std::uint64_t max_align = ctx_.config.transparent_hugepage ? ps * (ps / 8) : ps;
  if (align >= max_align) align = max_align;
  if (align < iova_alignment_) return -EINVAL;

  std::vector<IovaSpan> spans;
  const std::uint64_t lo = ps, hi = kMax - ps;
  if (allowed_.empty()) {
    spans.push_back({lo, hi});
  } else {
    for (const auto& [s, l] : allowed_) {
      if (l < lo || s > hi) continue;
      spans.push_back({std::max(s, lo), std::min(l, hi)});
    }
  }
  for (const auto& span : spans) {
    std::uint64_t s = span.start;
    if (!check_range(&s, span.last, length, align, page_offset)) continue;
    bool found = for_each_hole(s, span.last, [&](std::uint64_t hs, std::uint64_t hl) {
      if (!check_range(&hs, hl, length, align, page_offset)) return false;
      *iova = hs;
      return true;
    });
    if (found) return 0;
  }
  return -ENOSPC;
}

}  // namespace fastmap::sim
