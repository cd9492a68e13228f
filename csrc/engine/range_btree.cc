#include "engine/range_btree.h"

#include <algorithm>
#include <new>

namespace fastmap::engine {

namespace {

constexpr std::uint64_t kMax = ~std::uint64_t{0};

// Reserved-bit masks follow their entries when entries shift.
std::uint32_t mask_insert(std::uint32_t mask, std::uint32_t pos, bool bit) {
  const std::uint64_t m = mask;
  const std::uint64_t low = m & ((std::uint64_t{1} << pos) - 1);
  const std::uint64_t high = m >> pos;
  return static_cast<std::uint32_t>(low | (high << (pos + 1)) |
                                    (std::uint64_t{bit} << pos));
}

std::uint32_t mask_remove(std::uint32_t mask, std::uint32_t pos) {
  const std::uint64_t m = mask;
  const std::uint64_t low = m & ((std::uint64_t{1} << pos) - 1);
  const std::uint64_t high = m >> (pos + 1);
  return static_cast<std::uint32_t>(low | (high << pos));
}

std::uint32_t mask_low(std::uint32_t mask, std::uint32_t n) {
  return static_cast<std::uint32_t>(mask & ((std::uint64_t{1} << n) - 1));
}

}  // namespace

RangeBTree::RangeBTree() noexcept {
  // The root leaf always exists; an allocation failure this small is fatal anyway.
  leaves_.reserve(16);
  inners_.reserve(16);
  free_leaves_.reserve(16);
  free_inners_.reserve(16);
  leaves_.emplace_back();
  root_ = 0;
}

// ---- pools ------------------------------------------------------------------------------------

bool RangeBTree::reserve_for_insert(std::size_t k) noexcept {
  // k insertions add at most k leaves. Inner nodes split once per kInnerCap/2 new children,
  // so all levels together gain at most about k/7 of them, plus one per level and a new root.
  const std::size_t need_leaves = k;
  const std::size_t need_inners = k / 4 + 2 * static_cast<std::size_t>(levels_) + 4;
  try {
    if (free_leaves_.size() + (leaves_.capacity() - leaves_.size()) < need_leaves) {
      leaves_.reserve(std::max(leaves_.capacity() * 2, leaves_.size() + need_leaves));
      free_leaves_.reserve(leaves_.capacity());
    }
    if (free_inners_.size() + (inners_.capacity() - inners_.size()) < need_inners) {
      inners_.reserve(std::max(inners_.capacity() * 2, inners_.size() + need_inners));
      free_inners_.reserve(inners_.capacity());
    }
  } catch (const std::bad_alloc&) {
    return false;
  }
  return leaves_.capacity() < 0xFFFFFFFEu && inners_.capacity() < 0xFFFFFFFEu;
}

std::uint32_t RangeBTree::new_leaf() noexcept {
  if (!free_leaves_.empty()) {
    const std::uint32_t i = free_leaves_.back();
    free_leaves_.pop_back();
    leaves_[i].n = 0;
    leaves_[i].reserved = 0;
    return i;
  }
  leaves_.emplace_back();  // within capacity: reserve_for_insert() made room
  return static_cast<std::uint32_t>(leaves_.size() - 1);
}

std::uint32_t RangeBTree::new_inner() noexcept {
  if (!free_inners_.empty()) {
    const std::uint32_t i = free_inners_.back();
    free_inners_.pop_back();
    inners_[i].n = 0;
    return i;
  }
  inners_.emplace_back();
  return static_cast<std::uint32_t>(inners_.size() - 1);
}

// The free lists' capacity follows the pools', so these never allocate.
void RangeBTree::free_leaf(std::uint32_t i) noexcept { free_leaves_.push_back(i); }
void RangeBTree::free_inner(std::uint32_t i) noexcept { free_inners_.push_back(i); }

// ---- summaries --------------------------------------------------------------------------------

std::uint32_t RangeBTree::count(std::uint32_t node, int level) const noexcept {
  return level == 0 ? leaves_[node].n : inners_[node].n;
}

RangeBTree::Summary RangeBTree::summarize(std::uint32_t node, int level) const noexcept {
  std::uint64_t gap = 0;
  if (level == 0) {
    const Leaf& l = leaves_[node];
    for (std::uint32_t i = 1; i < l.n; ++i) gap = std::max(gap, l.start[i] - l.last[i - 1] - 1);
    return {l.start[0], l.last[l.n - 1], gap};
  }
  const Inner& in = inners_[node];
  gap = in.max_gap[0];
  for (std::uint32_t i = 1; i < in.n; ++i) {
    gap = std::max(gap, in.max_gap[i]);
    gap = std::max(gap, in.min_start[i] - in.max_last[i - 1] - 1);
  }
  return {in.min_start[0], in.max_last[in.n - 1], gap};
}

void RangeBTree::set_child(Inner& in, std::uint32_t i, std::uint32_t child,
                           int child_level) noexcept {
  const Summary s = summarize(child, child_level);
  in.child[i] = child;
  in.min_start[i] = s.min_start;
  in.max_last[i] = s.max_last;
  in.max_gap[i] = s.max_gap;
}

std::uint64_t RangeBTree::min_start() const noexcept { return summarize(root_, levels_).min_start; }
std::uint64_t RangeBTree::max_last() const noexcept { return summarize(root_, levels_).max_last; }
std::uint64_t RangeBTree::max_gap() const noexcept {
  return empty() ? 0 : summarize(root_, levels_).max_gap;
}

// ---- insertion --------------------------------------------------------------------------------

RangeBTree::Split RangeBTree::leaf_insert_at(std::uint32_t leaf, std::uint32_t pos,
                                             const RangeEntry& e) noexcept {
  Split split;
  std::uint32_t target = leaf;
  if (leaves_[leaf].n == kLeafCap) {
    // Move the upper half to a new right sibling, then insert into the proper half.
    const std::uint32_t r = new_leaf();
    Leaf& l = leaves_[leaf];
    Leaf& right = leaves_[r];
    constexpr std::uint32_t h = kLeafCap / 2;
    std::copy(l.start + h, l.start + kLeafCap, right.start);
    std::copy(l.last + h, l.last + kLeafCap, right.last);
    right.n = kLeafCap - h;
    right.reserved = l.reserved >> h;
    l.n = h;
    l.reserved = mask_low(l.reserved, h);
    split.node = r;
    if (pos > h) {
      target = r;
      pos -= h;
    }
  }
  Leaf& l = leaves_[target];
  std::copy_backward(l.start + pos, l.start + l.n, l.start + l.n + 1);
  std::copy_backward(l.last + pos, l.last + l.n, l.last + l.n + 1);
  l.start[pos] = e.start;
  l.last[pos] = e.last;
  l.reserved = mask_insert(l.reserved, pos, e.reserved);
  ++l.n;
  ++size_;
  return split;
}

RangeBTree::Split RangeBTree::inner_insert_after(std::uint32_t inner, std::uint32_t pos,
                                                 std::uint32_t child,
                                                 int child_level) noexcept {
  Split split;
  std::uint32_t target = inner;
  std::uint32_t at = pos + 1;
  if (inners_[inner].n == kInnerCap) {
    const std::uint32_t r = new_inner();
    Inner& in = inners_[inner];
    Inner& right = inners_[r];
    constexpr std::uint32_t h = kInnerCap / 2;
    std::copy(in.min_start + h, in.min_start + kInnerCap, right.min_start);
    std::copy(in.max_last + h, in.max_last + kInnerCap, right.max_last);
    std::copy(in.max_gap + h, in.max_gap + kInnerCap, right.max_gap);
    std::copy(in.child + h, in.child + kInnerCap, right.child);
    right.n = kInnerCap - h;
    in.n = h;
    split.node = r;
    if (at > h) {
      target = r;
      at -= h;
    }
  }
  Inner& in = inners_[target];
  std::copy_backward(in.min_start + at, in.min_start + in.n, in.min_start + in.n + 1);
  std::copy_backward(in.max_last + at, in.max_last + in.n, in.max_last + in.n + 1);
  std::copy_backward(in.max_gap + at, in.max_gap + in.n, in.max_gap + in.n + 1);
  std::copy_backward(in.child + at, in.child + in.n, in.child + in.n + 1);
  ++in.n;
  set_child(in, at, child, child_level);
  return split;
}

void RangeBTree::grow_root(const Split& s) noexcept {
  if (s.node == kNone) return;
  const std::uint32_t r = new_inner();
  Inner& in = inners_[r];
  in.n = 2;
  set_child(in, 0, root_, levels_);
  set_child(in, 1, s.node, levels_);
  root_ = r;
  ++levels_;
}

// Index of the child whose range of starts covers `key`: the last one starting at or before
// it, or the first.
static std::uint32_t child_for(const std::uint64_t* min_start, std::uint32_t n,
                               std::uint64_t key) {
  std::uint32_t i = 0;
  while (i + 1 < n && min_start[i + 1] <= key) ++i;
  return i;
}

RangeBTree::Split RangeBTree::insert_in(std::uint32_t node, int level,
                                        const RangeEntry& e) noexcept {
  if (level == 0) {
    const Leaf& l = leaves_[node];
    std::uint32_t pos = 0;
    while (pos < l.n && l.start[pos] < e.start) ++pos;
    return leaf_insert_at(node, pos, e);
  }
  Inner& in = inners_[node];
  const std::uint32_t i = child_for(in.min_start, in.n, e.start);
  const Split s = insert_in(in.child[i], level - 1, e);
  set_child(in, i, in.child[i], level - 1);
  if (s.node != kNone) return inner_insert_after(node, i, s.node, level - 1);
  return {};
}

void RangeBTree::insert(const RangeEntry& e) noexcept { grow_root(insert_in(root_, levels_, e)); }

// Lowest fit among the gaps of `node`'s subtree, whose neighbours outside it leave [lo, hi].
// A child is entered only if its cached summary shows a gap of at least `length` in its
// region, so without alignment rejections the walk is one root-to-leaf path.
RangeBTree::Split RangeBTree::fit_in(std::uint32_t node, int level, std::uint64_t lo,
                                     std::uint64_t hi, std::uint64_t length,
                                     std::uint64_t modulus, std::uint64_t phase,
                                     std::optional<GapPlacement>* placed) noexcept {
  if (level == 0) {
    const Leaf& l = leaves_[node];
    std::uint64_t gap_start = lo;
    bool open = true;  // gap_start is a real address (the previous range did not end at 2^64-1)
    for (std::uint32_t j = 0; j <= l.n; ++j) {
      const bool tail = j == l.n;
      if (open && (tail ? gap_start <= hi : l.start[j] > gap_start)) {
        const std::uint64_t gap_last = tail ? hi : l.start[j] - 1;
        if (auto x = place_in_gap(gap_start, gap_last, length, modulus, phase)) {
          *placed = GapPlacement{*x, gap_start, gap_last};
          return leaf_insert_at(node, j, RangeEntry{*x, *x + (length - 1), false});
        }
      }
      if (tail) break;
      open = l.last[j] != kMax;
      gap_start = l.last[j] + 1;
    }
    return {};
  }
  Inner& in = inners_[node];
  for (std::uint32_t i = 0; i < in.n; ++i) {
    const std::uint64_t lo_i = i == 0 ? lo : in.max_last[i - 1] + 1;
    const std::uint64_t hi_i = i + 1 == in.n ? hi : in.min_start[i + 1] - 1;
    if (in.max_gap[i] < length && in.min_start[i] - lo_i < length &&
        hi_i - in.max_last[i] < length)
      continue;
    const Split s = fit_in(in.child[i], level - 1, lo_i, hi_i, length, modulus, phase, placed);
    if (!*placed) continue;
    set_child(in, i, in.child[i], level - 1);
    if (s.node != kNone) return inner_insert_after(node, i, s.node, level - 1);
    return {};
  }
  return {};
}

std::optional<GapPlacement> RangeBTree::first_fit_insert(std::uint64_t length,
                                                         std::uint64_t modulus,
                                                         std::uint64_t phase) noexcept {
  std::optional<GapPlacement> placed;
  const Split s = fit_in(root_, levels_, 0, kMax, length, modulus, phase, &placed);
  grow_root(s);
  return placed;
}

// ---- erasure ----------------------------------------------------------------------------------

void RangeBTree::fix_underflow(Inner& in, std::uint32_t i, int child_level) noexcept {
  const std::uint32_t cap = child_level == 0 ? kLeafCap : kInnerCap;
  if (count(in.child[i], child_level) >= cap / 4 || in.n == 1) return;
  const std::uint32_t a = i > 0 ? i - 1 : i;  // left of the pair
  const std::uint32_t b = a + 1;
  const std::uint32_t na = count(in.child[a], child_level);
  const std::uint32_t nb = count(in.child[b], child_level);
  const std::uint32_t total = na + nb;
  if (child_level == 0) {
    Leaf& l = leaves_[in.child[a]];
    Leaf& r = leaves_[in.child[b]];
    if (total <= cap) {
      std::copy(r.start, r.start + nb, l.start + na);
      std::copy(r.last, r.last + nb, l.last + na);
      l.reserved = mask_low(l.reserved, na) | (r.reserved << na);
      l.n = total;
    } else if (na < total / 2) {  // refill a from the front of b
      const std::uint32_t k = total / 2 - na;
      std::copy(r.start, r.start + k, l.start + na);
      std::copy(r.last, r.last + k, l.last + na);
      l.reserved = mask_low(l.reserved, na) | (mask_low(r.reserved, k) << na);
      std::copy(r.start + k, r.start + nb, r.start);
      std::copy(r.last + k, r.last + nb, r.last);
      r.reserved >>= k;
      l.n = na + k;
      r.n = nb - k;
    } else {  // refill b from the back of a
      const std::uint32_t k = na - total / 2;
      std::copy_backward(r.start, r.start + nb, r.start + nb + k);
      std::copy_backward(r.last, r.last + nb, r.last + nb + k);
      std::copy(l.start + (na - k), l.start + na, r.start);
      std::copy(l.last + (na - k), l.last + na, r.last);
      r.reserved = (r.reserved << k) | (l.reserved >> (na - k));
      l.reserved = mask_low(l.reserved, na - k);
      l.n = na - k;
      r.n = nb + k;
    }
  } else {
    Inner& l = inners_[in.child[a]];
    Inner& r = inners_[in.child[b]];
    auto move = [](Inner& dst, std::uint32_t d, const Inner& src, std::uint32_t s,
                   std::uint32_t k) {
      std::copy(src.min_start + s, src.min_start + s + k, dst.min_start + d);
      std::copy(src.max_last + s, src.max_last + s + k, dst.max_last + d);
      std::copy(src.max_gap + s, src.max_gap + s + k, dst.max_gap + d);
      std::copy(src.child + s, src.child + s + k, dst.child + d);
    };
    if (total <= cap) {
      move(l, na, r, 0, nb);
      l.n = total;
    } else if (na < total / 2) {
      const std::uint32_t k = total / 2 - na;
      move(l, na, r, 0, k);
      move(r, 0, r, k, nb - k);  // forward overlapping copy: destination is lower
      l.n = na + k;
      r.n = nb - k;
    } else {
      const std::uint32_t k = na - total / 2;
      std::copy_backward(r.min_start, r.min_start + nb, r.min_start + nb + k);
      std::copy_backward(r.max_last, r.max_last + nb, r.max_last + nb + k);
      std::copy_backward(r.max_gap, r.max_gap + nb, r.max_gap + nb + k);
      std::copy_backward(r.child, r.child + nb, r.child + nb + k);
      move(r, 0, l, na - k, k);
      l.n = na - k;
      r.n = nb + k;
    }
  }
  if (total <= cap) {
    // b was merged into a: drop b from this node.
    if (child_level == 0) {
      free_leaf(in.child[b]);
    } else {
      free_inner(in.child[b]);
    }
    std::copy(in.min_start + b + 1, in.min_start + in.n, in.min_start + b);
    std::copy(in.max_last + b + 1, in.max_last + in.n, in.max_last + b);
    std::copy(in.max_gap + b + 1, in.max_gap + in.n, in.max_gap + b);
    std::copy(in.child + b + 1, in.child + in.n, in.child + b);
    --in.n;
    set_child(in, a, in.child[a], child_level);
  } else {
    set_child(in, a, in.child[a], child_level);
    set_child(in, b, in.child[b], child_level);
  }
}

RangeBTree::Erase RangeBTree::erase_in(std::uint32_t node, int level, std::uint64_t start,
                                       bool keep_reserved, RangeEntry* erased) noexcept {
  if (level == 0) {
    Leaf& l = leaves_[node];
    std::uint32_t j = 0;
    while (j < l.n && l.start[j] < start) ++j;
    if (j == l.n || l.start[j] != start) return Erase::kNotFound;
    const bool reserved = ((l.reserved >> j) & 1) != 0;
    if (keep_reserved && reserved) return Erase::kRefused;
    *erased = RangeEntry{l.start[j], l.last[j], reserved};
    std::copy(l.start + j + 1, l.start + l.n, l.start + j);
    std::copy(l.last + j + 1, l.last + l.n, l.last + j);
    l.reserved = mask_remove(l.reserved, j);
    --l.n;
    --size_;
    return Erase::kErased;
  }
  Inner& in = inners_[node];
  if (start < in.min_start[0]) return Erase::kNotFound;
  const std::uint32_t i = child_for(in.min_start, in.n, start);
  const Erase r = erase_in(in.child[i], level - 1, start, keep_reserved, erased);
  if (r != Erase::kErased) return r;
  if (count(in.child[i], level - 1) > 0) set_child(in, i, in.child[i], level - 1);
  fix_underflow(in, i, level - 1);
  return r;
}

RangeBTree::Erase RangeBTree::erase(std::uint64_t start, bool keep_reserved,
                                    RangeEntry* erased) noexcept {
  const Erase r = erase_in(root_, levels_, start, keep_reserved, erased);
  // A root with a single child hands the root role down.
  while (levels_ > 0 && inners_[root_].n == 1) {
    const std::uint32_t old = root_;
    root_ = inners_[old].child[0];
    --levels_;
    free_inner(old);
  }
  return r;
}

// ---- queries ----------------------------------------------------------------------------------

RangeEntry RangeBTree::first_entry(std::uint32_t node, int level) const noexcept {
  for (; level > 0; --level) node = inners_[node].child[0];
  const Leaf& l = leaves_[node];
  return RangeEntry{l.start[0], l.last[0], (l.reserved & 1) != 0};
}

std::optional<RangeEntry> RangeBTree::floor_in(std::uint32_t node, int level,
                                               std::uint64_t key) const noexcept {
  for (; level > 0; --level) {
    const Inner& in = inners_[node];
    if (key < in.min_start[0]) return std::nullopt;
    node = in.child[child_for(in.min_start, in.n, key)];
  }
  const Leaf& l = leaves_[node];
  std::uint32_t j = l.n;
  while (j > 0 && l.start[j - 1] > key) --j;
  if (j == 0) return std::nullopt;
  return RangeEntry{l.start[j - 1], l.last[j - 1], ((l.reserved >> (j - 1)) & 1) != 0};
}

std::optional<RangeEntry> RangeBTree::ceil_in(std::uint32_t node, int level,
                                              std::uint64_t key) const noexcept {
  if (level == 0) {
    const Leaf& l = leaves_[node];
    std::uint32_t j = 0;
    while (j < l.n && l.start[j] < key) ++j;
    if (j == l.n) return std::nullopt;
    return RangeEntry{l.start[j], l.last[j], ((l.reserved >> j) & 1) != 0};
  }
  const Inner& in = inners_[node];
  const std::uint32_t i = child_for(in.min_start, in.n, key);
  if (auto r = ceil_in(in.child[i], level - 1, key)) return r;
  if (i + 1 < in.n) return first_entry(in.child[i + 1], level - 1);
  return std::nullopt;
}

std::optional<RangeEntry> RangeBTree::floor(std::uint64_t key) const noexcept {
  return floor_in(root_, levels_, key);
}

std::optional<RangeEntry> RangeBTree::ceil(std::uint64_t key) const noexcept {
  return ceil_in(root_, levels_, key);
}

void RangeBTree::lowest_max_gap(std::uint64_t* start, std::uint64_t* last) const noexcept {
  const std::uint64_t best = max_gap();
  std::uint32_t node = root_;
  for (int level = levels_; level > 0; --level) {
    const Inner& in = inners_[node];
    for (std::uint32_t i = 0; i < in.n; ++i) {
      if (in.max_gap[i] == best) {
        node = in.child[i];
        break;
      }
      if (i + 1 < in.n && in.min_start[i + 1] - in.max_last[i] - 1 == best) {
        *start = in.max_last[i] + 1;
        *last = in.min_start[i + 1] - 1;
        return;
      }
    }
  }
  const Leaf& l = leaves_[node];
  for (std::uint32_t j = 1; j < l.n; ++j) {
    if (l.start[j] - l.last[j - 1] - 1 == best) {
      *start = l.last[j - 1] + 1;
      *last = l.start[j] - 1;
      return;
    }
  }
}

// ---- invariants (tests) -----------------------------------------------------------------------

bool RangeBTree::check_in(std::uint32_t node, int level, bool is_root, Summary* out,
                          std::size_t* entries) const noexcept {
  if (level == 0) {
    const Leaf& l = leaves_[node];
    if (l.n > kLeafCap) return false;
    if (!is_root && l.n < kLeafCap / 4) return false;
    if (l.n < kLeafCap && (l.reserved >> l.n) != 0) return false;
    for (std::uint32_t j = 0; j < l.n; ++j) {
      if (l.start[j] > l.last[j]) return false;
      if (j > 0 && l.last[j - 1] >= l.start[j]) return false;
    }
    *entries += l.n;
    if (l.n > 0) *out = summarize(node, 0);
    return true;
  }
  const Inner& in = inners_[node];
  if (in.n > kInnerCap || in.n < (is_root ? 2u : kInnerCap / 4)) return false;
  for (std::uint32_t i = 0; i < in.n; ++i) {
    Summary s{};
    if (!check_in(in.child[i], level - 1, false, &s, entries)) return false;
    if (s.min_start != in.min_start[i] || s.max_last != in.max_last[i] ||
        s.max_gap != in.max_gap[i])
      return false;
    if (i > 0 && in.max_last[i - 1] >= in.min_start[i]) return false;
  }
  *out = summarize(node, level);
  return true;
}

bool RangeBTree::check() const noexcept {
  Summary s{};
  std::size_t entries = 0;
  if (!check_in(root_, levels_, true, &s, &entries)) return false;
  return entries == size_;
}

}  // namespace fastmap::engine
