#include "engine/iova_allocator.h"

#include <algorithm>
#include <cerrno>
#include <new>

namespace fastmap::engine {

namespace {

bool is_pow2(std::uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

}  // namespace

IovaAllocator::IovaAllocator() noexcept {
  // Tiny; an allocation failure here is not recoverable by a caller either.
  huge_sizes_ = {std::uint64_t{1} << 21, std::uint64_t{1} << 30};
}

// ---- neighbours ---------------------------------------------------------------------------

IovaRange IovaAllocator::enclosing_gap(std::uint64_t start, std::uint64_t last) const noexcept {
  const auto p = tree_.floor(start);
  const auto s = tree_.ceil(last);
  return IovaRange{p ? p->last + 1 : 0, s ? s->start - 1 : kU64Max};
}

std::optional<RangeEntry> IovaAllocator::first_overlap(std::uint64_t start,
                                                       std::uint64_t last) const noexcept {
  if (auto f = tree_.floor(start); f && f->last >= start) return f;
  if (auto c = tree_.ceil(start); c && c->start <= last) return c;
  return std::nullopt;
}

// ---- mutation with the best-fit index kept in step ----------------------------------------

void IovaAllocator::occupy(std::uint64_t start, std::uint64_t last, bool reserved) noexcept {
  if (gap_index_active_) index_occupied(start, last, enclosing_gap(start, last));
  tree_.insert(RangeEntry{start, last, reserved});
  if (!reserved) ++allocated_count_;
}

void IovaAllocator::index_occupied(std::uint64_t start, std::uint64_t last,
                                   IovaRange gap) noexcept {
  gap_index_remove(gap.start, gap.last);
  if (start > gap.start) gap_index_add(gap.start, start - 1);
  if (last < gap.last) gap_index_add(last + 1, gap.last);
}

void IovaAllocator::vacate(std::uint64_t start) noexcept {
  RangeEntry e{};
  tree_.erase(start, false, &e);
  forget(e);
}

void IovaAllocator::forget(const RangeEntry& e) noexcept {
  if (!e.reserved) --allocated_count_;
  if (gap_index_active_) {
    const IovaRange g = enclosing_gap(e.start, e.last);
    if (e.start > g.start) gap_index_remove(g.start, e.start - 1);
    if (e.last < g.last) gap_index_remove(e.last + 1, g.last);
    gap_index_add(g.start, g.last);
  }
}

bool IovaAllocator::build_gap_index() noexcept {
  gap_index_.clear();
  try {
    std::uint64_t next = 0;  // first byte not yet known to be in use
    bool at_end = false;     // a range ends at 2^64 - 1
    tree_.for_each([&](const RangeEntry& e) {
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
    for (auto e = first_overlap(h.start, h.last); e && e->start <= h.last;) {
      if (!e->reserved) return -EEXIST;
      if (e->last == kU64Max) break;
      e = tree_.ceil(e->last + 1);
    }
  }
  if (!tree_.reserve_for_insert(holes.size())) return -ENOMEM;
  for (const IovaRange& h : holes) {
    const int err = reserve(h.start, h.last);
    if (err != 0) return err;  // unreachable: checked above, and room is reserved
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
  for (auto e = first_overlap(lo, hi); e && e->start <= hi;) {
    const bool overlaps = e->last >= start && e->start <= last;
    if (!e->reserved) {
      if (overlaps) return -EEXIST;
    } else {
      merged_start = std::min(merged_start, e->start);
      merged_last = std::max(merged_last, e->last);
    }
    if (e->last == kU64Max) break;
    e = tree_.ceil(e->last + 1);
  }
  if (!tree_.reserve_for_insert()) return -ENOMEM;
  // Remove the reserved ranges being merged, then insert the union.
  for (auto e = first_overlap(merged_start, merged_last); e;
       e = first_overlap(merged_start, merged_last)) {
    vacate(e->start);  // only reserved ranges lie inside [merged_start, merged_last]
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

// Smallest gap that fits, lowest address on ties: the gap index is ordered exactly so.
std::optional<GapPlacement> IovaAllocator::best_fit(std::uint64_t length, std::uint64_t modulus,
                                                    std::uint64_t phase) noexcept {
  for (auto it = gap_index_.lower_bound({length - 1, 0}); it != gap_index_.end(); ++it) {
    const std::uint64_t gap_start = it->second;
    const std::uint64_t gap_last = gap_start + it->first;
    if (auto x = place_in_gap(gap_start, gap_last, length, modulus, phase))
      return GapPlacement{*x, gap_start, gap_last};
  }
  return std::nullopt;
}

int IovaAllocator::alloc(const AllocRequest& req, std::uint64_t* iova) noexcept {
  std::uint64_t modulus;
  std::uint64_t phase;
  if (int err = constraint(req, &modulus, &phase); err != 0) return err;
  if (!tree_.reserve_for_insert()) return -ENOMEM;
  const std::uint64_t span = req.length - 1;
  if (req.fit == Fit::kBest) {
    if (!gap_index_active_ && !build_gap_index()) return -ENOMEM;
    const auto p = best_fit(req.length, modulus, phase);
    if (!p) return -ENOSPC;
    index_occupied(p->iova, p->iova + span, {p->gap_start, p->gap_last});
    tree_.insert(RangeEntry{p->iova, p->iova + span, false});
    *iova = p->iova;
  } else {
    // One walk finds the lowest fit and inserts it.
    const auto p = tree_.first_fit_insert(req.length, modulus, phase);
    if (!p) return -ENOSPC;
    if (gap_index_active_) index_occupied(p->iova, p->iova + span, {p->gap_start, p->gap_last});
    *iova = p->iova;
  }
  ++allocated_count_;
  return 0;
}

int IovaAllocator::alloc_fixed(std::uint64_t iova, std::uint64_t length) noexcept {
  if (length == 0) return -EINVAL;
  if (length - 1 > kU64Max - iova) return -EOVERFLOW;
  const std::uint64_t last = iova + (length - 1);
  // The lowest overlapping range decides the error, so the answer costs O(log n).
  if (const auto e = first_overlap(iova, last)) return e->reserved ? -EADDRNOTAVAIL : -EEXIST;
  if (!tree_.reserve_for_insert()) return -ENOMEM;
  occupy(iova, last, false);
  return 0;
}

int IovaAllocator::free(std::uint64_t iova, IovaRange* freed) noexcept {
  // One walk finds and removes the range.
  RangeEntry e{};
  switch (tree_.erase(iova, true, &e)) {
    case RangeBTree::Erase::kNotFound:
      return -ENOENT;
    case RangeBTree::Erase::kRefused:
      return -EPERM;
    case RangeBTree::Erase::kErased:
      break;
  }
  if (freed) *freed = IovaRange{e.start, e.last};
  forget(e);
  return 0;
}

int IovaAllocator::free(std::uint64_t iova, std::uint64_t length) noexcept {
  if (length == 0) return -EINVAL;
  if (length - 1 > kU64Max - iova) return -EOVERFLOW;
  const std::uint64_t last = iova + (length - 1);
  const auto e = tree_.floor(iova);
  if (!e || e->last < iova) return -ENOENT;
  if (e->reserved) return -EPERM;
  if (e->last < last) return -ENOENT;
  // What remains of the range goes back in as up to two pieces.
  if (!tree_.reserve_for_insert(2)) return -ENOMEM;
  vacate(e->start);
  if (e->start < iova) occupy(e->start, iova - 1, false);
  if (last < e->last) occupy(last + 1, e->last, false);
  return 0;
}

int IovaAllocator::bulk_alloc(std::span<const std::uint64_t> lengths, std::uint64_t align,
                              std::span<const std::uint64_t> hint_vas, Fit fit,
                              std::span<std::uint64_t> out, std::size_t* failed_index) noexcept {
  *failed_index = 0;
  if (out.size() != lengths.size() || (!hint_vas.empty() && hint_vas.size() != lengths.size()))
    return -EINVAL;
  // Each alloc() makes its own room; undoing needs none (frees never allocate).
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
  // Room to put everything back, so that a failure can always be undone. This is address
  // space, not memory: the pools only touch what they use.
  if (!tree_.reserve_for_insert(iovas.size())) return -ENOMEM;
  for (std::size_t i = 0; i < iovas.size(); ++i) {
    IovaRange r;
    if (int err = free(iovas[i], &r); err != 0) {
      *failed_index = i;
      for (const IovaRange& back : done) occupy(back.start, back.last, false);
      return err;
    }
    done.push_back(r);
  }
  return 0;
}

// ---- queries --------------------------------------------------------------------------------

std::optional<IovaEntry> IovaAllocator::find(std::uint64_t iova) const noexcept {
  const auto e = tree_.floor(iova);
  if (!e || e->last < iova) return std::nullopt;
  return IovaEntry{e->start, e->last, e->reserved};
}

bool IovaAllocator::contains(std::uint64_t iova) const noexcept {
  const auto e = find(iova);
  return e && !e->reserved;
}

std::optional<IovaRange> IovaAllocator::largest_free_gap() const noexcept {
  if (tree_.empty()) return IovaRange{0, kU64Max};
  const std::uint64_t min_start = tree_.min_start();
  const std::uint64_t max_last = tree_.max_last();
  const std::uint64_t lead = min_start;            // bytes in [0, min_start - 1]
  const std::uint64_t trail = kU64Max - max_last;  // bytes in [max_last + 1, 2^64 - 1]
  const std::uint64_t inner = tree_.max_gap();
  const std::uint64_t best = std::max({lead, inner, trail});
  if (best == 0) return std::nullopt;
  if (lead == best) return IovaRange{0, min_start - 1};
  if (inner == best) {
    IovaRange g{0, 0};
    tree_.lowest_max_gap(&g.start, &g.last);
    return g;
  }
  return IovaRange{max_last + 1, kU64Max};
}

// ---- invariants (tests) ----------------------------------------------------------------------

bool IovaAllocator::check_invariants() const noexcept {
  if (!tree_.check()) return false;
  std::size_t allocated = 0;
  bool adjacent_reserved = false;
  bool have_prev = false;
  RangeEntry prev{};
  tree_.for_each([&](const RangeEntry& e) {
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
      tree_.for_each([&](const RangeEntry& e) {
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
