#include "engine/segment_table.h"

#include <algorithm>
#include <utility>

namespace fastmap::engine {

namespace {

bool by_iova(const Segment& a, const Segment& b) noexcept { return a.iova < b.iova; }

}  // namespace

void SegmentTable::reserve(std::size_t k) {
  seg_mark_ = segs_.size();
  va_mark_ = by_va_.size();
  seg_in_order_ = va_in_order_ = shadow_ok_ = true;
  // Stay geometric: a run of single maps must not reallocate every time.
  if (segs_.capacity() < segs_.size() + k) segs_.reserve(std::max(segs_.size() + k, 2 * segs_.capacity()));
  if (!va_shadow_ && by_va_.capacity() < by_va_.size() + k) {
    by_va_.reserve(std::max(by_va_.size() + k, 2 * by_va_.capacity()));
  }
}

void SegmentTable::push(Segment&& s) {
  if (!segs_.empty() && segs_.back().iova >= s.iova) seg_in_order_ = false;
  max_length_ = std::max(max_length_, s.length);
  if (va_shadow_) {
    if (s.va == 0 || (!segs_.empty() && !va_order(segs_.back(), s))) shadow_ok_ = false;
  } else if (s.va != 0) {
    const VaEntry e{s.va, s.iova, s.length};
    if (!by_va_.empty() && !va_order(by_va_.back(), e)) va_in_order_ = false;
    by_va_.push_back(e);
  }
  segs_.push_back(std::move(s));
}

void SegmentTable::settle(std::vector<Pin>* displaced) {
  bool replaced = false;
  if (!seg_in_order_) {
    const auto mid = segs_.begin() + static_cast<std::ptrdiff_t>(seg_mark_);
    std::stable_sort(mid, segs_.end(), by_iova);
    std::inplace_merge(segs_.begin(), mid, segs_.end(), by_iova);
    // Equal IOVAs: the merge is stable, so the older entry comes first. Keep the newer.
    std::vector<std::size_t> stale;
    for (std::size_t i = 1; i < segs_.size(); ++i) {
      if (segs_[i - 1].iova != segs_[i].iova) continue;
      if (segs_[i - 1].pin) displaced->push_back(std::move(segs_[i - 1].pin));
      stale.push_back(i - 1);
    }
    for (std::size_t r = stale.size(); r-- > 0;) {
      segs_.erase(segs_.begin() + static_cast<std::ptrdiff_t>(stale[r]));
    }
    replaced = !stale.empty();
  }
  if (va_shadow_) {
    // Still one order for both keys? Then the segment array stays the VA index too.
    const bool holds = (seg_in_order_ && shadow_ok_) ||
                       (std::none_of(segs_.begin(), segs_.end(), [](const Segment& s) { return s.va == 0; }) &&
                        std::is_sorted(segs_.begin(), segs_.end(),
                                       [](const Segment& a, const Segment& b) { return va_order(a, b); }));
    if (!holds) {
      va_shadow_ = false;
      rebuild_va();
    }
  } else if (replaced) {
    rebuild_va();
  } else if (!va_in_order_) {
    const auto mid = by_va_.begin() + static_cast<std::ptrdiff_t>(va_mark_);
    std::sort(mid, by_va_.end(), va_order<VaEntry>);
    std::inplace_merge(by_va_.begin(), mid, by_va_.end(), va_order<VaEntry>);
  }
  seg_mark_ = segs_.size();
  va_mark_ = by_va_.size();
  seg_in_order_ = va_in_order_ = shadow_ok_ = true;
}

void SegmentTable::rebuild_va() {
  by_va_.clear();
  for (const Segment& s : segs_) {
    if (s.va != 0) by_va_.push_back(VaEntry{s.va, s.iova, s.length});
  }
  std::sort(by_va_.begin(), by_va_.end(), va_order<VaEntry>);
}

void SegmentTable::erase_gone_va() {
  if (gone_.empty()) return;
  constexpr auto va_order = SegmentTable::va_order<VaEntry>;
  // Usually VA order follows IOVA order and this is already sorted.
  if (!std::is_sorted(gone_.begin(), gone_.end(), va_order)) {
    std::sort(gone_.begin(), gone_.end(), va_order);
  }
  auto same = [](const VaEntry& a, const VaEntry& b) { return a.va == b.va && a.iova == b.iova; };
  if (gone_.size() <= kEraseOneByOne) {
    for (std::size_t r = gone_.size(); r-- > 0;) {
      auto at = std::lower_bound(by_va_.begin(), by_va_.end(), gone_[r], va_order);
      if (at != by_va_.end() && same(*at, gone_[r])) by_va_.erase(at);
    }
    return;
  }
  // One merge pass over two arrays in the same order.
  auto first = std::lower_bound(by_va_.begin(), by_va_.end(), gone_[0], va_order);
  std::size_t w = static_cast<std::size_t>(first - by_va_.begin()), k = 0;
  for (std::size_t r = w; r < by_va_.size(); ++r) {
    while (k < gone_.size() && va_order(gone_[k], by_va_[r])) ++k;  // not indexed: skip
    if (k < gone_.size() && same(gone_[k], by_va_[r])) {
      ++k;
      continue;
    }
    by_va_[w++] = by_va_[r];
  }
  by_va_.erase(by_va_.begin() + static_cast<std::ptrdiff_t>(w), by_va_.end());
}

void SegmentTable::clear() noexcept {
  segs_.clear();
  by_va_.clear();
  va_shadow_ = true;
  seg_mark_ = va_mark_ = 0;
  seg_in_order_ = va_in_order_ = true;
}

std::size_t SegmentTable::upper_bound(std::uint64_t key) const noexcept {
  auto it = std::upper_bound(segs_.begin(), segs_.end(), key,
                             [](std::uint64_t k, const Segment& s) { return k < s.iova; });
  return static_cast<std::size_t>(it - segs_.begin());
}

std::size_t SegmentTable::lower_bound(std::uint64_t key) const noexcept {
  auto it = std::lower_bound(segs_.begin(), segs_.end(), key,
                             [](const Segment& s, std::uint64_t k) { return s.iova < k; });
  return static_cast<std::size_t>(it - segs_.begin());
}

std::size_t SegmentTable::find(std::uint64_t iova) const noexcept {
  const std::size_t i = lower_bound(iova);
  return i < segs_.size() && segs_[i].iova == iova ? i : npos;
}

bool SegmentTable::lookup_iova(std::uint64_t iova, std::uint64_t* va) const noexcept {
  const std::size_t i = upper_bound(iova);
  if (i == 0) return false;
  const Segment& s = segs_[i - 1];
  if (iova - s.iova >= s.length || s.va == 0) return false;
  *va = s.va + (iova - s.iova);
  return true;
}

bool SegmentTable::lookup_va(std::uint64_t va, std::uint64_t* iova) const noexcept {
  return va_shadow_ ? scan_va(segs_, va, iova) : scan_va(by_va_, va, iova);
}

template <typename Entries>
bool SegmentTable::scan_va(const Entries& index, std::uint64_t va, std::uint64_t* iova) const noexcept {
  // Segments may overlap in VA; scan back from the last one starting at or below `va`.
  // No segment is longer than max_length_, so stop once nothing earlier can reach `va`.
  auto it = std::upper_bound(index.begin(), index.end(), va,
                             [](std::uint64_t v, const auto& e) { return v < e.va; });
  bool found = false;
  std::uint64_t best = 0;
  while (it != index.begin()) {
    --it;
    if (va - it->va < it->length && (!found || it->iova + (va - it->va) < best)) {
      best = it->iova + (va - it->va);
      found = true;
    }
    if (va - it->va >= max_length_) break;
  }
  if (found) *iova = best;
  return found;
}

}  // namespace fastmap::engine
