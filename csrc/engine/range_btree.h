// RangeBTree: disjoint [start, last] ranges in a B+tree keyed by start, where every inner
// node keeps, per child, the child subtree's lowest start, highest last byte and largest
// free gap between its ranges. A first-fit search reads those arrays and enters only a child
// that can hold the request, then inserts in the same walk.
//
// Why a B+tree and not a binary tree: with 10^5..10^6 ranges the cost of an operation is its
// cache misses. A leaf holds 32 ranges in two arrays and an inner node 16 children, so a
// walk touches 3-5 nodes of a few adjacent cache lines each, where a balanced binary tree
// touches 17-21 nodes scattered through memory.
//
// Nodes live in two index-addressed pools with free lists. Mutations never allocate:
// callers first make room with reserve_for_insert(). Nothing throws.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

namespace fastmap::engine {

// The lowest x in [gap_start, gap_last] with x ≡ phase (mod modulus, a power of two) such
// that [x, x + length - 1] still fits in the gap.
inline std::optional<std::uint64_t> place_in_gap(std::uint64_t gap_start, std::uint64_t gap_last,
                                                 std::uint64_t length, std::uint64_t modulus,
                                                 std::uint64_t phase) {
  const std::uint64_t x = gap_start + ((phase - gap_start) & (modulus - 1));
  if (x < gap_start || x > gap_last) return std::nullopt;  // wrapped past 2^64, or no room
  if (gap_last - x < length - 1) return std::nullopt;
  return x;
}

struct RangeEntry {
  std::uint64_t start;
  std::uint64_t last;  // inclusive
  bool reserved;
};

// Where a search placed a new range, and the free gap [gap_start, gap_last] it came from.
struct GapPlacement {
  std::uint64_t iova;
  std::uint64_t gap_start;
  std::uint64_t gap_last;
};

class RangeBTree {
 public:
  RangeBTree() noexcept;
  RangeBTree(const RangeBTree&) = delete;
  RangeBTree& operator=(const RangeBTree&) = delete;

  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  // Summary of all ranges; only meaningful when !empty().
  std::uint64_t min_start() const noexcept;
  std::uint64_t max_last() const noexcept;
  std::uint64_t max_gap() const noexcept;  // largest gap between two ranges, bytes

  // Room for `k` insertions (each may split a node on every level) without allocating.
  bool reserve_for_insert(std::size_t k = 1) noexcept;
  // Inserts a range over free space. Needs reserve_for_insert().
  void insert(const RangeEntry& e) noexcept;
  // The lowest x ≡ phase (mod modulus) such that [x, x + length - 1] is free, inserted as an
  // allocation; nothing changes if there is none. Needs reserve_for_insert().
  std::optional<GapPlacement> first_fit_insert(std::uint64_t length, std::uint64_t modulus,
                                               std::uint64_t phase) noexcept;

  enum class Erase { kErased, kNotFound, kRefused };
  // Removes the range starting at `start`. With keep_reserved a reserved range stays
  // (kRefused). *erased receives the removed range.
  Erase erase(std::uint64_t start, bool keep_reserved, RangeEntry* erased) noexcept;

  std::optional<RangeEntry> floor(std::uint64_t key) const noexcept;  // greatest start <= key
  std::optional<RangeEntry> ceil(std::uint64_t key) const noexcept;   // least start >= key
  // The lowest gap between two ranges of size max_gap(), as [start, last]; needs max_gap() > 0.
  void lowest_max_gap(std::uint64_t* start, std::uint64_t* last) const noexcept;

  template <typename F>
  void for_each(F&& f) const {
    for_each_in(root_, levels_, f);
  }

  // Ordering, disjointness, every cached summary, fill and equal leaf depth; for tests.
  bool check() const noexcept;

 private:
  static constexpr int kLeafCap = 32;
  static constexpr int kInnerCap = 16;
  static constexpr std::uint32_t kNone = ~std::uint32_t{0};

  struct Leaf {
    std::uint64_t start[kLeafCap];
    std::uint64_t last[kLeafCap];
    std::uint32_t reserved = 0;  // bit i: entry i is reserved
    std::uint32_t n = 0;
  };
  struct Inner {
    std::uint64_t min_start[kInnerCap];
    std::uint64_t max_last[kInnerCap];
    std::uint64_t max_gap[kInnerCap];
    std::uint32_t child[kInnerCap];
    std::uint32_t n = 0;
  };
  struct Summary {
    std::uint64_t min_start;
    std::uint64_t max_last;
    std::uint64_t max_gap;
  };
  // What a child hands its parent after an insertion: a new right sibling, if it split.
  struct Split {
    std::uint32_t node = kNone;
  };

  Summary summarize(std::uint32_t node, int level) const noexcept;
  std::uint32_t count(std::uint32_t node, int level) const noexcept;
  void set_child(Inner& in, std::uint32_t i, std::uint32_t child, int child_level) noexcept;

  std::uint32_t new_leaf() noexcept;
  std::uint32_t new_inner() noexcept;
  void free_leaf(std::uint32_t i) noexcept;
  void free_inner(std::uint32_t i) noexcept;

  // Insert `e` at position `pos` of a leaf, splitting it when full.
  Split leaf_insert_at(std::uint32_t leaf, std::uint32_t pos, const RangeEntry& e) noexcept;
  // Insert `child` right after position `pos` of an inner node, splitting it when full.
  Split inner_insert_after(std::uint32_t inner, std::uint32_t pos, std::uint32_t child,
                           int child_level) noexcept;
  void grow_root(const Split& s) noexcept;

  Split insert_in(std::uint32_t node, int level, const RangeEntry& e) noexcept;
  Split fit_in(std::uint32_t node, int level, std::uint64_t lo, std::uint64_t hi,
               std::uint64_t length, std::uint64_t modulus, std::uint64_t phase,
               std::optional<GapPlacement>* placed) noexcept;
  Erase erase_in(std::uint32_t node, int level, std::uint64_t start, bool keep_reserved,
                 RangeEntry* erased) noexcept;
  // After child i of `inner` lost entries: merge it with or refill it from a sibling when it
  // has fallen below a quarter full.
  void fix_underflow(Inner& in, std::uint32_t i, int child_level) noexcept;

  std::optional<RangeEntry> floor_in(std::uint32_t node, int level,
                                     std::uint64_t key) const noexcept;
  std::optional<RangeEntry> ceil_in(std::uint32_t node, int level,
                                    std::uint64_t key) const noexcept;
  RangeEntry first_entry(std::uint32_t node, int level) const noexcept;

  template <typename F>
  void for_each_in(std::uint32_t node, int level, F& f) const {
    if (level == 0) {
      const Leaf& l = leaves_[node];
      for (std::uint32_t i = 0; i < l.n; ++i)
        f(RangeEntry{l.start[i], l.last[i], ((l.reserved >> i) & 1) != 0});
      return;
    }
    const Inner& in = inners_[node];
    for (std::uint32_t i = 0; i < in.n; ++i) for_each_in(in.child[i], level - 1, f);
  }

  bool check_in(std::uint32_t node, int level, bool is_root, Summary* out,
                std::size_t* entries) const noexcept;

  std::vector<Leaf> leaves_;
  std::vector<Inner> inners_;
  std::vector<std::uint32_t> free_leaves_;
  std::vector<std::uint32_t> free_inners_;
  std::uint32_t root_ = 0;
  int levels_ = 0;  // 0: the root is a leaf
  std::size_t size_ = 0;
};

}  // namespace fastmap::engine
