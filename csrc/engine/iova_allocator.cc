#include "engine/iova_allocator.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <new>

namespace fastmap::engine {

namespace {

bool is_pow2(std::uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

// The lowest x in [gap_start, gap_last] with x ≡ phase (mod modulus) such that
// [x, x + length - 1] still fits in the gap.
std::optional<std::uint64_t> place_in_gap(std::uint64_t gap_start, std::uint64_t gap_last,
                                          std::uint64_t length, std::uint64_t modulus,
                                          std::uint64_t phase) {
  const std::uint64_t x = gap_start + ((phase - gap_start) & (modulus - 1));
  if (x < gap_start || x > gap_last) return std::nullopt;  // wrapped past 2^64, or no room
  if (gap_last - x < length - 1) return std::nullopt;
  return x;
}

}  // namespace

IovaAllocator::IovaAllocator() noexcept {
  // Both vectors are tiny; an allocation failure here is not recoverable by a caller either.
  nodes_.resize(1);  // the nil sentinel
  huge_sizes_ = {std::uint64_t{1} << 21, std::uint64_t{1} << 30};
}

// ---- node pool ------------------------------------------------------------------------

bool IovaAllocator::ensure_nodes(std::size_t k) noexcept {
  if (free_count_ >= k) return true;
  const std::size_t need = nodes_.size() + (k - free_count_);
  if (need - 1 > std::size_t{0xFFFFFFFE}) return false;  // indices are u32; 0 is nil
  if (nodes_.capacity() >= need) return true;
  try {
    nodes_.reserve(std::max(need, nodes_.capacity() * 2));
  } catch (const std::bad_alloc&) {
    return false;
  }
  return true;
}

std::uint32_t IovaAllocator::new_node(std::uint64_t start, std::uint64_t last,
                                      bool reserved) noexcept {
  std::uint32_t n;
  if (free_head_ != kNil) {
    n = free_head_;
    free_head_ = nodes_[n].left;
    --free_count_;
  } else {
    // ensure_nodes() reserved the capacity, so this cannot reallocate or throw.
    n = static_cast<std::uint32_t>(nodes_.size());
    nodes_.emplace_back();
  }
  Node& x = nodes_[n];
  x = Node{};
  x.start = x.min_start = start;
  x.last = x.max_last = last;
  x.reserved = reserved;
  return n;
}

void IovaAllocator::release_node(std::uint32_t n) noexcept {
  nodes_[n].left = free_head_;
  free_head_ = n;
  ++free_count_;
}

// ---- AVL tree with gap augmentation -----------------------------------------------------

std::int8_t IovaAllocator::height(std::uint32_t t) const noexcept {
  if (t == kNil) return 0;
  return static_cast<std::int8_t>(1 + std::max(nodes_[t].left_height, nodes_[t].right_height));
}

std::uint64_t IovaAllocator::max_gap(std::uint32_t t) const noexcept {
  return std::max(nodes_[t].left_gap, nodes_[t].right_gap);  // nil: 0
}

// Neighbouring ranges never overlap, so the gap differences below cannot underflow.
void IovaAllocator::set_left(std::uint32_t t, std::uint32_t child) noexcept {
  Node& n = nodes_[t];
  n.left = child;
  if (child == kNil) {
    n.left_height = 0;
    n.left_gap = 0;
    n.min_start = n.start;
    return;
  }
  const Node& c = nodes_[child];
  n.left_height = height(child);
  n.left_gap = std::max(max_gap(child), n.start - c.max_last - 1);
  n.min_start = c.min_start;
}

void IovaAllocator::set_right(std::uint32_t t, std::uint32_t child) noexcept {
  Node& n = nodes_[t];
  n.right = child;
  if (child == kNil) {
    n.right_height = 0;
    n.right_gap = 0;
    n.max_last = n.last;
    return;
  }
  const Node& c = nodes_[child];
  n.right_height = height(child);
  n.right_gap = std::max(max_gap(child), c.min_start - n.last - 1);
  n.max_last = c.max_last;
}

void IovaAllocator::pull(std::uint32_t t) noexcept {
  set_left(t, nodes_[t].left);
  set_right(t, nodes_[t].right);
}

// A rotation changes one side of each of the two nodes; only those sides are refreshed, and
// the lower node first because the upper one reads it.
std::uint32_t IovaAllocator::rotate_left(std::uint32_t t) noexcept {
  const std::uint32_t r = nodes_[t].right;
  set_right(t, nodes_[r].left);
  set_left(r, t);
  return r;
}

std::uint32_t IovaAllocator::rotate_right(std::uint32_t t) noexcept {
  const std::uint32_t l = nodes_[t].left;
  set_left(t, nodes_[l].right);
  set_right(l, t);
  return l;
}

std::uint32_t IovaAllocator::rebalance(std::uint32_t t) noexcept {
  Node& n = nodes_[t];
  const int balance = n.left_height - n.right_height;
  if (balance > 1) {
    const Node& l = nodes_[n.left];
    if (l.left_height < l.right_height) set_left(t, rotate_left(n.left));
    return rotate_right(t);
  }
  if (balance < -1) {
    const Node& r = nodes_[n.right];
    if (r.right_height < r.left_height) set_right(t, rotate_right(n.right));
    return rotate_left(t);
  }
  return t;
}

std::uint32_t IovaAllocator::insert_node(std::uint32_t t, std::uint32_t n) noexcept {
  if (t == kNil) return n;
  if (nodes_[n].start < nodes_[t].start) {
    set_left(t, insert_node(nodes_[t].left, n));
  } else {
    set_right(t, insert_node(nodes_[t].right, n));
  }
  return rebalance(t);
}

std::uint32_t IovaAllocator::erase_min(std::uint32_t t, std::uint32_t* min) noexcept {
  if (nodes_[t].left == kNil) {
    *min = t;
    return nodes_[t].right;
  }
  set_left(t, erase_min(nodes_[t].left, min));
  return rebalance(t);
}

std::uint32_t IovaAllocator::erase_key(std::uint32_t t, std::uint64_t start,
                                       bool keep_reserved, std::uint32_t* erased,
                                       bool* refused) noexcept {
  if (t == kNil) return kNil;
  if (start < nodes_[t].start) {
    set_left(t, erase_key(nodes_[t].left, start, keep_reserved, erased, refused));
  } else if (start > nodes_[t].start) {
    set_right(t, erase_key(nodes_[t].right, start, keep_reserved, erased, refused));
  } else {
    if (keep_reserved && nodes_[t].reserved) {
      *refused = true;
      return t;
    }
    *erased = t;
    const std::uint32_t l = nodes_[t].left;
    const std::uint32_t r = nodes_[t].right;
    if (l == kNil) return r;
    if (r == kNil) return l;
    // The successor takes t's place.
    std::uint32_t m = kNil;
    const std::uint32_t rest = erase_min(r, &m);
    set_right(m, rest);
    set_left(m, l);
    return rebalance(m);
  }
  return rebalance(t);
}

std::uint32_t IovaAllocator::floor_node(std::uint64_t key) const noexcept {
  std::uint32_t best = kNil;
  for (std::uint32_t t = root_; t != kNil;) {
    if (nodes_[t].start <= key) {
      best = t;
      t = nodes_[t].right;
    } else {
      t = nodes_[t].left;
    }
  }
  return best;
}

std::uint32_t IovaAllocator::ceil_node(std::uint64_t key) const noexcept {
  std::uint32_t best = kNil;
  for (std::uint32_t t = root_; t != kNil;) {
    if (nodes_[t].start >= key) {
      best = t;
      t = nodes_[t].left;
    } else {
      t = nodes_[t].right;
    }
  }
  return best;
}

IovaRange IovaAllocator::enclosing_gap(std::uint64_t start, std::uint64_t last) const noexcept {
  const std::uint32_t p = floor_node(start);
  const std::uint32_t s = ceil_node(last);
  return IovaRange{p != kNil ? nodes_[p].last + 1 : 0,
                   s != kNil ? nodes_[s].start - 1 : kU64Max};
}

std::uint32_t IovaAllocator::first_overlap(std::uint64_t start,
                                           std::uint64_t last) const noexcept {
  const std::uint32_t f = floor_node(start);
  if (f != kNil && nodes_[f].last >= start) return f;
  const std::uint32_t c = ceil_node(start);
  if (c != kNil && nodes_[c].start <= last) return c;
  return kNil;
}

// ---- mutation with the best-fit index kept in step ----------------------------------------

void IovaAllocator::occupy(std::uint64_t start, std::uint64_t last, bool reserved) noexcept {
  if (gap_index_active_) index_occupied(start, last, enclosing_gap(start, last));
  const std::uint32_t n = new_node(start, last, reserved);
  root_ = insert_node(root_, n);
  ++size_;
  if (!reserved) ++allocated_count_;
}

void IovaAllocator::index_occupied(std::uint64_t start, std::uint64_t last,
                                   IovaRange gap) noexcept {
  gap_index_remove(gap.start, gap.last);
  if (start > gap.start) gap_index_add(gap.start, start - 1);
  if (last < gap.last) gap_index_add(last + 1, gap.last);
}

void IovaAllocator::vacate(std::uint32_t node) noexcept {
  std::uint32_t erased = kNil;
  bool refused = false;
  root_ = erase_key(root_, nodes_[node].start, false, &erased, &refused);
  forget(erased);
}

void IovaAllocator::forget(std::uint32_t node) noexcept {
  const std::uint64_t start = nodes_[node].start;
  const std::uint64_t last = nodes_[node].last;
  --size_;
  if (!nodes_[node].reserved) --allocated_count_;
  release_node(node);
  if (gap_index_active_) {
    const IovaRange g = enclosing_gap(start, last);
    if (start > g.start) gap_index_remove(g.start, start - 1);
    if (last < g.last) gap_index_remove(last + 1, g.last);
    gap_index_add(g.start, g.last);
  }
}

bool IovaAllocator::build_gap_index() noexcept {
  gap_index_.clear();
  try {
    std::uint64_t next = 0;  // first byte not yet known to be in use
    bool at_end = false;     // a range ends at 2^64 - 1
    for_each([&](const IovaEntry& e) {
      if (e.start > next) gap_index_.emplace(e.start - 1 - next, next);
      at_end = e.last == kU64Max;
      next = e.last + 1;
    });
    if (!at_end) gap_index_.emplace(kU64Max - next, next);
  } catch (const std::bad_alloc&) {
    gap_index_.clear();
    gap_index_active_ = false;
    return false;
  }
  gap_index_active_ = true;
  return true;
}

void IovaAllocator::gap_index_remove(std::uint64_t start, std::uint64_t last) noexcept {
  gap_index_.erase({last - start, start});
}

void IovaAllocator::gap_index_add(std::uint64_t start, std::uint64_t last) noexcept {
  try {
    gap_index_.emplace(last - start, start);
  } catch (const std::bad_alloc&) {
    // The index is only a cache of the tree: drop it, the next best-fit rebuilds it.
    gap_index_.clear();
    gap_index_active_ = false;
  }
}

// ---- configuration --------------------------------------------------------------------------

int IovaAllocator::restrict_to(std::span<const IovaRange> allowed) noexcept {
  std::vector<IovaRange> sorted;
  try {
    sorted.assign(allowed.begin(), allowed.end());
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
  for (const IovaRange& r : sorted)
    if (r.start > r.last) return -EINVAL;
  std::sort(sorted.begin(), sorted.end(),
            [](const IovaRange& a, const IovaRange& b) { return a.start < b.start; });
  // The complement of the union, as ranges to reserve.
  std::vector<IovaRange> holes;
  try {
    std::uint64_t next = 0;
    bool done = false;  // the union reaches 2^64 - 1
    for (const IovaRange& r : sorted) {
      if (done) break;
      if (r.start > next) holes.push_back({next, r.start - 1});
      if (r.last == kU64Max) {
        done = true;
      } else {
        next = std::max(next, r.last + 1);
      }
    }
    if (!done) holes.push_back({next, kU64Max});
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
  // Check everything before changing anything so a failure leaves no partial reservation.
  for (const IovaRange& h : holes) {
    for (std::uint32_t t = first_overlap(h.start, h.last);
         t != kNil && nodes_[t].start <= h.last;) {
      if (!nodes_[t].reserved) return -EEXIST;
      if (nodes_[t].last == kU64Max) break;
      t = ceil_node(nodes_[t].last + 1);
    }
  }
  if (!ensure_nodes(holes.size())) return -ENOMEM;
  for (const IovaRange& h : holes) {
    const int err = reserve(h.start, h.last);
    if (err != 0) return err;  // unreachable: checked above, and nodes are reserved
  }
  return 0;
}

int IovaAllocator::reserve(std::uint64_t start, std::uint64_t last) noexcept {
  if (start > last) return -EINVAL;
  // Reserved ranges that overlap or touch [start, last] merge into one.
  const std::uint64_t lo = start == 0 ? 0 : start - 1;
  const std::uint64_t hi = last == kU64Max ? kU64Max : last + 1;
  std::uint64_t merged_start = start;
  std::uint64_t merged_last = last;
  for (std::uint32_t t = first_overlap(lo, hi); t != kNil && nodes_[t].start <= hi;) {
    const Node& n = nodes_[t];
    const bool overlaps = n.last >= start && n.start <= last;
    if (!n.reserved) {
      if (overlaps) return -EEXIST;
    } else {
      merged_start = std::min(merged_start, n.start);
      merged_last = std::max(merged_last, n.last);
    }
    if (n.last == kU64Max) break;
    t = ceil_node(n.last + 1);
  }
  if (!ensure_nodes(1)) return -ENOMEM;
  // Remove the reserved nodes being merged, then insert the union.
  for (std::uint32_t t = first_overlap(merged_start, merged_last); t != kNil;
       t = first_overlap(merged_start, merged_last)) {
    vacate(t);  // only reserved nodes lie inside [merged_start, merged_last]
  }
  occupy(merged_start, merged_last, true);
  return 0;
}

int IovaAllocator::set_huge_page_sizes(std::span<const std::uint64_t> sizes) noexcept {
  for (std::uint64_t s : sizes)
    if (!is_pow2(s)) return -EINVAL;
  try {
    huge_sizes_.assign(sizes.begin(), sizes.end());
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
  return 0;
}

// ---- allocation ---------------------------------------------------------------------------

int IovaAllocator::constraint(const AllocRequest& req, std::uint64_t* modulus,
                              std::uint64_t* phase) const noexcept {
  if (req.length == 0 || !is_pow2(req.align)) return -EINVAL;
  *modulus = req.align;
  *phase = 0;
  if (req.hint_va) {
    std::uint64_t huge = 1;
    for (std::uint64_t h : huge_sizes_)
      if (h <= req.length) huge = std::max(huge, h);
    *modulus = std::max(req.align, huge);
    *phase = *req.hint_va & (*modulus - 1);
  }
  return 0;
}

// First-fit and insertion in one descent. Finds the lowest-address fit among the gaps of
// subtree t, whose neighbours outside the subtree leave [lo, hi] (lo <= min_start,
// max_last <= hi; for an empty subtree [lo, hi] is one gap), links a new leaf there and
// returns the subtree's new root; *placed says where, or stays empty if nothing fits.
// A side is entered only if some gap there is at least `length` bytes, judged from t's own
// cached fields, so the walk reads only the nodes it descends into. With no alignment
// rejections it is one path: O(log n); each gap that is long enough but loses to alignment
// costs one more O(log n) detour. Needs a node from ensure_nodes().
std::uint32_t IovaAllocator::first_fit_insert(std::uint32_t t, std::uint64_t lo,
                                              std::uint64_t hi, std::uint64_t length,
                                              std::uint64_t modulus, std::uint64_t phase,
                                              std::optional<Placement>* placed) noexcept {
  if (t == kNil) {
    const auto x = place_in_gap(lo, hi, length, modulus, phase);
    if (!x) return kNil;
    *placed = Placement{*x, lo, hi};
    return new_node(*x, *x + (length - 1), false);
  }
  const Node& n = nodes_[t];  // new_node() cannot reallocate: capacity was reserved
  const bool try_left =
      n.left != kNil ? n.left_gap >= length || n.min_start - lo >= length : n.start > lo;
  if (try_left) {
    const std::uint32_t c =
        first_fit_insert(n.left, lo, n.start - 1, length, modulus, phase, placed);
    if (*placed) {
      set_left(t, c);
      return rebalance(t);
    }
  }
  const bool try_right =
      n.right != kNil ? n.right_gap >= length || hi - n.max_last >= length : n.last < hi;
  if (try_right) {
    const std::uint32_t c =
        first_fit_insert(n.right, n.last + 1, hi, length, modulus, phase, placed);
    if (*placed) {
      set_right(t, c);
      return rebalance(t);
    }
  }
  return t;
}

// Smallest gap that fits, lowest address on ties: the gap index is ordered exactly so.
std::optional<IovaAllocator::Placement> IovaAllocator::best_fit(std::uint64_t length,
                                                                std::uint64_t modulus,
                                                                std::uint64_t phase) noexcept {
  for (auto it = gap_index_.lower_bound({length - 1, 0}); it != gap_index_.end(); ++it) {
    const std::uint64_t gap_start = it->second;
    const std::uint64_t gap_last = gap_start + it->first;
    if (auto x = place_in_gap(gap_start, gap_last, length, modulus, phase))
      return Placement{*x, gap_start, gap_last};
  }
  return std::nullopt;
}

int IovaAllocator::alloc(const AllocRequest& req, std::uint64_t* iova) noexcept {
  std::uint64_t modulus;
  std::uint64_t phase;
  if (int err = constraint(req, &modulus, &phase); err != 0) return err;
  if (!ensure_nodes(1)) return -ENOMEM;
  const std::uint64_t span = req.length - 1;
  if (req.fit == Fit::kBest) {
    if (!gap_index_active_ && !build_gap_index()) return -ENOMEM;
    const auto p = best_fit(req.length, modulus, phase);
    if (!p) return -ENOSPC;
    index_occupied(p->iova, p->iova + span, {p->gap_start, p->gap_last});
    root_ = insert_node(root_, new_node(p->iova, p->iova + span, false));
    *iova = p->iova;
  } else {
    std::optional<Placement> p;
    const std::uint32_t root = first_fit_insert(root_, 0, kU64Max, req.length, modulus, phase, &p);
    if (!p) return -ENOSPC;
    root_ = root;
    if (gap_index_active_) index_occupied(p->iova, p->iova + span, {p->gap_start, p->gap_last});
    *iova = p->iova;
  }
  ++size_;
  ++allocated_count_;
  return 0;
}

int IovaAllocator::alloc_fixed(std::uint64_t iova, std::uint64_t length) noexcept {
  if (length == 0) return -EINVAL;
  if (length - 1 > kU64Max - iova) return -EOVERFLOW;
  const std::uint64_t last = iova + (length - 1);
  // The lowest overlapping range decides the error, so the answer costs O(log n).
  if (const std::uint32_t t = first_overlap(iova, last); t != kNil)
    return nodes_[t].reserved ? -EADDRNOTAVAIL : -EEXIST;
  if (!ensure_nodes(1)) return -ENOMEM;
  occupy(iova, last, false);
  return 0;
}

int IovaAllocator::free(std::uint64_t iova, IovaRange* freed) noexcept {
  // One descent finds and unlinks the node.
  std::uint32_t erased = kNil;
  bool refused = false;
  root_ = erase_key(root_, iova, true, &erased, &refused);
  if (refused) return -EPERM;
  if (erased == kNil) return -ENOENT;
  if (freed) *freed = IovaRange{nodes_[erased].start, nodes_[erased].last};
  forget(erased);
  return 0;
}

int IovaAllocator::free(std::uint64_t iova, std::uint64_t length) noexcept {
  if (length == 0) return -EINVAL;
  if (length - 1 > kU64Max - iova) return -EOVERFLOW;
  const std::uint64_t last = iova + (length - 1);
  const std::uint32_t t = floor_node(iova);
  if (t == kNil || nodes_[t].last < iova) return -ENOENT;
  if (nodes_[t].reserved) return -EPERM;
  if (nodes_[t].last < last) return -ENOENT;
  // Splitting one range into two needs one node beyond the one being released.
  if (!ensure_nodes(1)) return -ENOMEM;
  const std::uint64_t start = nodes_[t].start;
  const std::uint64_t end = nodes_[t].last;
  vacate(t);
  if (start < iova) occupy(start, iova - 1, false);
  if (last < end) occupy(last + 1, end, false);
  return 0;
}

int IovaAllocator::bulk_alloc(std::span<const std::uint64_t> lengths, std::uint64_t align,
                              std::span<const std::uint64_t> hint_vas, Fit fit,
                              std::span<std::uint64_t> out, std::size_t* failed_index) noexcept {
  *failed_index = 0;
  if (out.size() != lengths.size() || (!hint_vas.empty() && hint_vas.size() != lengths.size()))
    return -EINVAL;
  if (!ensure_nodes(lengths.size())) return -ENOMEM;
  for (std::size_t i = 0; i < lengths.size(); ++i) {
    AllocRequest req{lengths[i], align, std::nullopt, fit};
    if (!hint_vas.empty()) req.hint_va = hint_vas[i];
    if (int err = alloc(req, &out[i]); err != 0) {
      *failed_index = i;
      for (std::size_t j = 0; j < i; ++j) free(out[j]);  // cannot fail: we just made them
      return err;
    }
  }
  return 0;
}

int IovaAllocator::bulk_free(std::span<const std::uint64_t> iovas,
                             std::size_t* failed_index) noexcept {
  *failed_index = 0;
  std::vector<IovaRange> done;
  try {
    done.reserve(iovas.size());
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
  for (std::size_t i = 0; i < iovas.size(); ++i) {
    IovaRange r;
    if (int err = free(iovas[i], &r); err != 0) {
      *failed_index = i;
      // Put back what this call freed; the released nodes are on the free list, so this
      // needs no memory.
      for (const IovaRange& back : done) occupy(back.start, back.last, false);
      return err;
    }
    done.push_back(r);
  }
  return 0;
}

// ---- queries --------------------------------------------------------------------------------

std::optional<IovaEntry> IovaAllocator::find(std::uint64_t iova) const noexcept {
  const std::uint32_t t = floor_node(iova);
  if (t == kNil || nodes_[t].last < iova) return std::nullopt;
  return IovaEntry{nodes_[t].start, nodes_[t].last, nodes_[t].reserved};
}

bool IovaAllocator::contains(std::uint64_t iova) const noexcept {
  const auto e = find(iova);
  return e && !e->reserved;
}

std::optional<IovaRange> IovaAllocator::largest_free_gap() const noexcept {
  if (root_ == kNil) return IovaRange{0, kU64Max};
  const Node& r = nodes_[root_];
  const std::uint64_t lead = r.min_start;            // bytes in [0, min_start - 1]
  const std::uint64_t trail = kU64Max - r.max_last;  // bytes in [max_last + 1, 2^64 - 1]
  const std::uint64_t best = std::max({lead, max_gap(root_), trail});
  if (best == 0) return std::nullopt;
  if (lead == best) return IovaRange{0, r.min_start - 1};
  if (max_gap(root_) == best) {
    // Descend to the lowest internal gap of that size.
    std::uint32_t t = root_;
    for (;;) {
      const Node& n = nodes_[t];
      if (n.left_gap == best) {
        if (max_gap(n.left) == best) {
          t = n.left;
          continue;
        }
        return IovaRange{nodes_[n.left].max_last + 1, n.start - 1};
      }
      // Then right_gap == best.
      if (nodes_[n.right].min_start - n.last - 1 == best)
        return IovaRange{n.last + 1, nodes_[n.right].min_start - 1};
      t = n.right;
    }
  }
  return IovaRange{r.max_last + 1, kU64Max};
}

// ---- invariants (tests) ----------------------------------------------------------------------

bool IovaAllocator::check_subtree(std::uint32_t t, std::uint64_t* count, bool* first,
                                  std::uint64_t* prev_last) const noexcept {
  if (t == kNil) return true;
  const Node& n = nodes_[t];
  if (!check_subtree(n.left, count, first, prev_last)) return false;
  if (n.start > n.last) return false;
  if (!*first && *prev_last >= n.start) return false;  // order and disjointness
  *first = false;
  *prev_last = n.last;
  ++*count;
  if (!check_subtree(n.right, count, first, prev_last)) return false;
  // Every cached field against a recomputation from the children themselves.
  if (n.left_height != height(n.left) || n.right_height != height(n.right)) return false;
  if (std::abs(n.left_height - n.right_height) > 1) return false;
  const Node& l = nodes_[n.left];
  const Node& r = nodes_[n.right];
  if (n.min_start != (n.left != kNil ? l.min_start : n.start)) return false;
  if (n.max_last != (n.right != kNil ? r.max_last : n.last)) return false;
  const std::uint64_t lg = n.left != kNil ? std::max(max_gap(n.left), n.start - l.max_last - 1) : 0;
  const std::uint64_t rg = n.right != kNil ? std::max(max_gap(n.right), r.min_start - n.last - 1) : 0;
  return n.left_gap == lg && n.right_gap == rg;
}

bool IovaAllocator::check_invariants() const noexcept {
  std::uint64_t count = 0;
  bool first = true;
  std::uint64_t prev_last = 0;
  if (!check_subtree(root_, &count, &first, &prev_last)) return false;
  if (count != size_) return false;
  std::size_t allocated = 0;
  bool adjacent_reserved = false;
  bool have_prev = false;
  IovaEntry prev{};
  for_each([&](const IovaEntry& e) {
    if (!e.reserved) ++allocated;
    if (have_prev && prev.reserved && e.reserved && prev.last + 1 == e.start)
      adjacent_reserved = true;  // reserve() merges touching reserved ranges
    prev = e;
    have_prev = true;
  });
  if (allocated != allocated_count_ || adjacent_reserved) return false;
  if (gap_index_active_) {
    try {
      std::set<std::pair<std::uint64_t, std::uint64_t>> expect;
      std::uint64_t next = 0;
      bool at_end = false;
      for_each([&](const IovaEntry& e) {
        if (e.start > next) expect.emplace(e.start - 1 - next, next);
        at_end = e.last == kU64Max;
        next = e.last + 1;
      });
      if (!at_end) expect.emplace(kU64Max - next, next);
      if (expect != gap_index_) return false;
    } catch (const std::bad_alloc&) {
      return false;
    }
  }
  return true;
}

}  // namespace fastmap::engine
