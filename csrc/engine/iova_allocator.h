// IovaAllocator: hands out IOVA ranges for mappings.
//
// The ranges in use live in a RangeBTree (range_btree.h): a B+tree keyed by start whose
// inner nodes know, per child subtree, the lowest start, the highest last byte and the
// largest free gap between its ranges. A first-fit search skips every subtree whose gaps are
// all too small, so it is one root-to-leaf walk, which inserts the new range on its way;
// free is one walk too. Alignment can make a gap that is long enough unusable; each such gap
// costs one extra O(log n) detour.
// Free space is never stored; it is whatever lies between two ranges, so freeing a range
// merges it with its neighbouring free space by construction.
//
// Space outside the allowed ranges, and every reserved range, is held by "reserved" entries
// that are never freed, so searches need no separate allowed/reserved bookkeeping.
//
// Best-fit needs the smallest sufficient gap, which a max-gap augmentation cannot find, so a
// second index, gaps ordered by (size, start), is built on the first best-fit request and
// kept in step from then on. Allocators that only use first-fit never pay for it.
//
// Every byte address is a u64 and every range is [start, last] inclusive, so the whole
// 64-bit space (2^64 bytes) is representable without overflow.
//
// Errors are returned as -errno; nothing throws. Not thread-safe: callers serialize.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <set>
#include <span>
#include <utility>
#include <vector>

#include "engine/range_btree.h"

namespace fastmap::engine {

inline constexpr std::uint64_t kU64Max = ~std::uint64_t{0};

struct IovaRange {
  std::uint64_t start;
  std::uint64_t last;  // inclusive
};

struct IovaEntry {
  std::uint64_t start;
  std::uint64_t last;
  bool reserved;
};

enum class Fit : std::uint8_t { kFirst = 0, kBest = 1 };

// One allocation request. The result `iova` satisfies iova ≡ phase (mod modulus) where,
// without a hint, modulus = align and phase = 0. With `hint_va`, modulus = max(align, H),
// H being the largest configured huge-page size <= length (1 if none), and
// phase = hint_va mod modulus: the IOVA keeps the VA's offset inside a huge page so the
// IOMMU can still use 2 MiB / 1 GiB IOPTEs, and inside an `align` granule (page offset).
struct AllocRequest {
  std::uint64_t length = 0;
  std::uint64_t align = 1;  // power of two
  std::optional<std::uint64_t> hint_va;
  Fit fit = Fit::kFirst;
};

class IovaAllocator {
 public:
  // The whole 64-bit space is usable until restrict_to()/reserve() say otherwise. Huge-page
  // sizes default to 2 MiB and 1 GiB (x86-64 and arm64 with 4 KiB pages).
  IovaAllocator() noexcept;

  IovaAllocator(const IovaAllocator&) = delete;
  IovaAllocator& operator=(const IovaAllocator&) = delete;

  // Only the union of `allowed` stays usable: the rest becomes reserved. -EINVAL for a range
  // with start > last, -EEXIST if an allocation lies outside the union (nothing changes).
  int restrict_to(std::span<const IovaRange> allowed) noexcept;
  // Marks [start, last] permanently in use. Merges with touching reserved ranges.
  // -EINVAL if start > last, -EEXIST if it overlaps an allocation (nothing changes).
  int reserve(std::uint64_t start, std::uint64_t last) noexcept;
  // Each size must be a power of two; -EINVAL otherwise (nothing changes).
  int set_huge_page_sizes(std::span<const std::uint64_t> sizes) noexcept;
  std::span<const std::uint64_t> huge_page_sizes() const noexcept { return huge_sizes_; }

  // 0 and *iova on success. -EINVAL: length 0 or align not a power of two; -ENOSPC: no gap
  // fits; -ENOMEM: out of memory.
  int alloc(const AllocRequest& req, std::uint64_t* iova) noexcept;
  // Claims exactly [iova, iova + length - 1]. -EINVAL: length 0; -EOVERFLOW: it wraps;
  // -EADDRNOTAVAIL: it touches a reserved range (or lies outside the allowed ranges);
  // -EEXIST: it overlaps an allocation.
  int alloc_fixed(std::uint64_t iova, std::uint64_t length) noexcept;
  // Frees the allocation that starts at `iova`; *freed (optional) receives it.
  // -ENOENT: no allocation starts there; -EPERM: it is a reserved range.
  int free(std::uint64_t iova, IovaRange* freed = nullptr) noexcept;
  // Frees [iova, iova + length - 1], which must lie inside one allocation; what remains of
  // that allocation stays allocated (as up to two ranges). -EINVAL: length 0; -EOVERFLOW:
  // it wraps; -ENOENT: not inside one allocation; -EPERM: inside a reserved range.
  int free(std::uint64_t iova, std::uint64_t length) noexcept;

  // All-or-nothing batches. On failure the allocator is as it was before the call,
  // *failed_index names the element that failed and the error is returned. `hint_vas` is
  // empty or has one entry per length.
  int bulk_alloc(std::span<const std::uint64_t> lengths, std::uint64_t align,
                 std::span<const std::uint64_t> hint_vas, Fit fit, std::span<std::uint64_t> out,
                 std::size_t* failed_index) noexcept;
  int bulk_free(std::span<const std::uint64_t> iovas, std::size_t* failed_index) noexcept;

  // The range (allocated or reserved) holding `iova`, if any.
  std::optional<IovaEntry> find(std::uint64_t iova) const noexcept;
  // Whether `iova` lies in an allocation (reserved ranges do not count).
  bool contains(std::uint64_t iova) const noexcept;
  // The largest free gap, lowest address on ties; none when everything is in use.
  std::optional<IovaRange> largest_free_gap() const noexcept;

  std::size_t allocated_count() const noexcept { return allocated_count_; }
  std::size_t reserved_count() const noexcept { return tree_.size() - allocated_count_; }

  // Calls f(const IovaEntry&) for every range in address order.
  template <typename F>
  void for_each(F&& f) const;

  // Verifies every structural invariant (ordering, disjointness, B+tree fill and depth,
  // cached summaries, the best-fit index); for tests. Returns false on the first violation.
  bool check_invariants() const noexcept;

 private:
  // The free gap around [start, last], which must be free: from the predecessor's last + 1
  // to the successor's start - 1.
  IovaRange enclosing_gap(std::uint64_t start, std::uint64_t last) const noexcept;
  // The lowest range overlapping [start, last], if any.
  std::optional<RangeEntry> first_overlap(std::uint64_t start, std::uint64_t last) const noexcept;

  std::optional<GapPlacement> best_fit(std::uint64_t length, std::uint64_t modulus,
                                       std::uint64_t phase) noexcept;
  int constraint(const AllocRequest& req, std::uint64_t* modulus,
                 std::uint64_t* phase) const noexcept;

  // Inserts an allocation or reserved range over known-free space, keeping the gap index.
  // Needs room from tree_.reserve_for_insert(); cannot fail then.
  void occupy(std::uint64_t start, std::uint64_t last, bool reserved) noexcept;
  // Removes the range starting at `start` (reserved or not), keeping the gap index.
  void vacate(std::uint64_t start) noexcept;
  // Bookkeeping once `e` has left the tree: counts and the gap index.
  void forget(const RangeEntry& e) noexcept;
  // Gap-index update for [start, last] taken out of the free gap `gap`.
  void index_occupied(std::uint64_t start, std::uint64_t last, IovaRange gap) noexcept;

  // Best-fit index of free gaps, keyed (last - start, start).
  bool build_gap_index() noexcept;
  void gap_index_remove(std::uint64_t start, std::uint64_t last) noexcept;
  void gap_index_add(std::uint64_t start, std::uint64_t last) noexcept;

  RangeBTree tree_;
  std::size_t allocated_count_ = 0;
  std::vector<std::uint64_t> huge_sizes_;

  bool gap_index_active_ = false;
  std::set<std::pair<std::uint64_t, std::uint64_t>> gap_index_;
};

template <typename F>
void IovaAllocator::for_each(F&& f) const {
  tree_.for_each([&](const RangeEntry& e) { f(IovaEntry{e.start, e.last, e.reserved}); });
}

}  // namespace fastmap::engine
