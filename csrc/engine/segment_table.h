// SegmentTable: the segments one IOAS has mapped through the engine, and the VA <-> IOVA
// index over them, as two flat arrays kept sorted at every step (no deferred work).
//
// Why flat arrays and not a tree: a batch is measured against a bare loop of ioctls, and
// the usual batch arrives in IOVA (and VA) order. Then a map appends to both arrays and an
// unmap of the batch is one compaction pass: sequential memory traffic, no per-segment
// allocation, no node to free, and lookups are binary searches over contiguous memory.
// Out-of-order input costs a sort of the batch and one merge. The price: a single map or
// unmap in the middle of n live segments moves the tail of the arrays (a memmove of up to
// n entries), as the VA index always did.
//
// Not locked: the owning IoasMapper serializes every call. Nothing here throws except
// std::bad_alloc when growing the arrays.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <span>
#include <vector>

namespace fastmap::engine {

// Keeps the memory of one mapping alive (opaque to the engine; null for raw VAs).
using Pin = std::shared_ptr<void>;

// One mapping made through the engine, and the kernel area (run) that holds it.
struct Segment {
  std::uint64_t iova;
  std::uint64_t va;        // 0 for an adopted area (COPY, MAP_FILE): it cannot be re-mapped
  std::uint64_t length;
  std::uint32_t prot;      // IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE
  std::uint64_t run_iova;  // start of the kernel area holding this segment
  Pin pin;                 // what keeps the mapped memory alive, if anything
};

// A Segment as seen from outside the engine: the same fields, and whether it holds a pin,
// but not the pin itself. Pins stay with the mapping and go only with the unmap that
// removes it, so a snapshot kept by a caller cannot keep mapped memory alive.
struct SegmentInfo {
  std::uint64_t iova;
  std::uint64_t va;
  std::uint64_t length;
  std::uint32_t prot;
  std::uint64_t run_iova;
  bool pinned;
};

class SegmentTable {
 public:
  static constexpr std::size_t npos = ~std::size_t{0};

  std::size_t size() const noexcept { return segs_.size(); }
  bool empty() const noexcept { return segs_.empty(); }
  // Segments by IOVA (IOVAs are unique: the kernel refuses overlapping areas).
  const std::vector<Segment>& segments() const noexcept { return segs_; }
  Segment& at(std::size_t i) noexcept { return segs_[i]; }

  // Adding: reserve(k), then push() each new segment in any order, then settle(). Between
  // push() and settle() no lookup may run. settle() keeps both arrays sorted; a pushed
  // segment whose IOVA is already present replaces the old one (a leftover: the kernel
  // refuses to map over an area), whose pin goes to `displaced`.
  void reserve(std::size_t k);
  void push(Segment&& s);
  void settle(std::vector<Pin>* displaced);

  // Removes the segments at index(items[0]), index(items[1]), ... (ascending, distinct).
  // Their pins must have been moved out already. One compaction pass per array (or, for a
  // few, a memmove each); removing everything is a clear().
  template <typename Items, typename Index>
  void erase(const Items& items, Index index);
  // Drops everything; the pins must have been moved out already.
  void clear() noexcept;

  // Index of the first segment with iova > key (or >= key): a binary search.
  std::size_t upper_bound(std::uint64_t key) const noexcept;
  std::size_t lower_bound(std::uint64_t key) const noexcept;
  // Index of the segment starting exactly at `iova`, or npos.
  std::size_t find(std::uint64_t iova) const noexcept;

  // The VA behind an IOVA; false if no segment with a VA covers it.
  bool lookup_iova(std::uint64_t iova, std::uint64_t* va) const noexcept;
  // The lowest IOVA at which `va` is mapped; false if none.
  bool lookup_va(std::uint64_t va, std::uint64_t* iova) const noexcept;

 private:
  struct VaEntry {
    std::uint64_t va;
    std::uint64_t iova;
    std::uint64_t length;
  };
  // VA order, ties by IOVA (for VaEntry and Segment alike).
  template <typename T>
  static bool va_order(const T& a, const T& b) noexcept {
    return a.va != b.va ? a.va < b.va : a.iova < b.iova;
  }
  template <typename Entries>
  bool scan_va(const Entries& index, std::uint64_t va, std::uint64_t* iova) const noexcept;
  // Up to this many removals take a memmove each; more take one compaction pass.
  static constexpr std::size_t kEraseOneByOne = 8;
  void rebuild_va();
  // Removes gone_'s entries from by_va_.
  void erase_gone_va();
  template <typename Items, typename Index>
  void erase_segments(const Items& items, Index index);

  std::vector<Segment> segs_;  // sorted by iova
  // The VA index. While every segment has a VA and segs_ is in VA order as well (the usual
  // case: memory mapped at rising IOVAs in address order), segs_ is the VA index itself
  // (va_shadow_) and by_va_ stays empty: maps and unmaps then write one array, not two.
  // Otherwise by_va_ holds the segments with a VA, sorted by (va, iova).
  bool va_shadow_ = true;
  std::vector<VaEntry> by_va_;
  // Where the arrays were sorted up to before the pushes now pending, and whether the
  // pushes so far extend them in order (then settle() has nothing to do).
  std::size_t seg_mark_ = 0;
  std::size_t va_mark_ = 0;
  bool seg_in_order_ = true;
  bool va_in_order_ = true;
  bool shadow_ok_ = true;  // the pushes keep segs_ in VA order (with va_shadow_)
  std::uint64_t max_length_ = 0;  // longest segment ever added: bounds the VA scan back
  std::vector<VaEntry> gone_;     // erase() scratch, kept so big unmaps do not reallocate
};

template <typename Items, typename Index>
void SegmentTable::erase(const Items& items, Index index) {
  const std::size_t k = std::size(items);
  if (k == 0) return;
  if (k == segs_.size()) {
    clear();
    return;
  }
  if (va_shadow_) {
    erase_segments(items, index);  // a subsequence of segs_ stays in VA order
    return;
  }
  gone_.clear();
  for (const auto& item : items) {
    const Segment& s = segs_[index(item)];
    if (s.va != 0) gone_.push_back(VaEntry{s.va, s.iova, s.length});
  }
  erase_gone_va();
  erase_segments(items, index);
}

template <typename Items, typename Index>
void SegmentTable::erase_segments(const Items& items, Index index) {
  const std::size_t k = std::size(items);
  if (k <= kEraseOneByOne) {
    for (std::size_t r = k; r-- > 0;) {
      segs_.erase(segs_.begin() + static_cast<std::ptrdiff_t>(index(items[r])));
    }
    return;
  }
  std::size_t w = index(items[0]), next = 0;
  for (std::size_t r = w; r < segs_.size(); ++r) {
    if (next < k && index(items[next]) == r) {
      ++next;
      continue;
    }
    segs_[w++] = std::move(segs_[r]);
  }
  segs_.erase(segs_.begin() + static_cast<std::ptrdiff_t>(w), segs_.end());
}

}  // namespace fastmap::engine
