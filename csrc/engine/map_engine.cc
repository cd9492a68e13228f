#include "engine/map_engine.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <limits>
#include <system_error>
#include <thread>
#include <utility>

#include "uapi/iommufd.h"

namespace fastmap::engine {

namespace {

constexpr std::size_t kMinRunsPerThread = 256;
constexpr std::uint32_t kProtMask = uapi::IOMMU_IOAS_MAP_READABLE | uapi::IOMMU_IOAS_MAP_WRITEABLE;

BatchError fail(int err, std::size_t index, const char* call) {
  BatchError e;
  e.errno_value = err;
  e.index = index;
  e.call = call;
  return e;
}

bool wraps(std::uint64_t start, std::uint64_t length) {
  return length != 0 && start + (length - 1) < start;
}

// out[i] and found[i] for each key (out 0 where it is not found); how many were found.
template <class Lookup>
std::size_t lookup_each(std::span<const std::uint64_t> keys, std::span<std::uint64_t> out,
                        std::span<std::uint8_t> found, Lookup lookup) {
  std::size_t hits = 0;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    std::uint64_t v = 0;
    const bool ok = lookup(keys[i], &v);
    out[i] = v;
    found[i] = ok;
    hits += ok;
  }
  return hits;
}

}  // namespace

int IoasMapper::map_one(std::uint64_t va, std::uint64_t length, std::uint64_t* iova, bool fixed,
                        std::uint32_t prot) noexcept {
  uapi::iommu_ioas_map cmd{};
  cmd.size = sizeof cmd;
  cmd.flags = prot | (fixed ? uapi::IOMMU_IOAS_MAP_FIXED_IOVA : 0);
  cmd.ioas_id = ioas_id_;
  cmd.user_va = va;
  cmd.length = length;
  cmd.iova = fixed ? *iova : 0;
  long rc = kernel_.ioctl(fd_, uapi::IOMMU_IOAS_MAP, &cmd);
  if (rc < 0) return static_cast<int>(-rc);
  *iova = cmd.iova;
  return 0;
}

int IoasMapper::unmap_one(std::uint64_t iova, std::uint64_t length) noexcept {
  uapi::iommu_ioas_unmap cmd{};
  cmd.size = sizeof cmd;
  cmd.ioas_id = ioas_id_;
  cmd.iova = iova;
  cmd.length = length;
  long rc = kernel_.ioctl(fd_, uapi::IOMMU_IOAS_UNMAP, &cmd);
  return rc < 0 ? static_cast<int>(-rc) : 0;
}

std::vector<IoasMapper::Run> IoasMapper::plan_runs(std::span<const std::uint64_t> vas,
                                                   std::span<const std::uint64_t> lengths,
                                                   std::span<const std::uint64_t> fixed_iovas,
                                                   std::uint32_t prot, bool coalesce) const {
  const bool fixed = !fixed_iovas.empty();
  std::vector<Run> runs;
  runs.reserve(coalesce ? 16 : vas.size());
  for (std::size_t i = 0; i < vas.size(); ++i) {
    const std::uint64_t iova = fixed ? fixed_iovas[i] : 0;
    if (coalesce && !runs.empty()) {
      Run& r = runs.back();
      const bool va_next = r.va + r.length == vas[i];
      const bool iova_next = !fixed || r.iova + r.length == iova;
      // Stop merging before the run's length or end would overflow.
      const bool fits = r.length <= std::numeric_limits<std::uint64_t>::max() / 2 - lengths[i];
      if (va_next && iova_next && fits && lengths[i] != 0) {
        r.length += lengths[i];
        ++r.count;
        continue;
      }
    }
    runs.push_back(Run{iova, vas[i], lengths[i], prot, i, 1});
  }
  return runs;
}

bool IoasMapper::rollback_runs(const std::vector<Run>& runs, std::size_t count,
                               const std::vector<char>* mapped) {
  bool ok = true;
  for (std::size_t r = count; r-- > 0;) {
    if (mapped && !(*mapped)[r]) continue;
    if (unmap_one(runs[r].iova, runs[r].length) != 0) ok = false;
  }
  return ok;
}

BatchError IoasMapper::submit_serial(std::vector<Run>& runs, bool fixed, std::size_t* done) {
  for (std::size_t r = 0; r < runs.size(); ++r) {
    if (int err = map_one(runs[r].va, runs[r].length, &runs[r].iova, fixed, runs[r].prot)) {
      *done = r;
      return fail(err, runs[r].first, "IOMMU_IOAS_MAP");
    }
  }
  *done = runs.size();
  return {};
}

BatchError IoasMapper::submit_parallel(std::vector<Run>& runs, unsigned threads,
                                       std::size_t* done) {
  // Each thread maps a contiguous slice in order and stops at its first failure. Runs were
  // checked not to overlap each other, so failures do not depend on the order and the
  // smallest failing index is the one a serial submission reports.
  const std::size_t n = runs.size();
  std::vector<char> mapped(n, 0);
  std::vector<std::size_t> failed_at(threads, n);
  std::vector<int> failed_err(threads, 0);
  std::vector<std::thread> pool;
  pool.reserve(threads);
  const std::size_t chunk = (n + threads - 1) / threads;
  auto slice = [&](unsigned t, std::size_t begin, std::size_t end) noexcept {
    for (std::size_t r = begin; r < end; ++r) {
      if (int err = map_one(runs[r].va, runs[r].length, &runs[r].iova, true, runs[r].prot)) {
        failed_at[t] = r;
        failed_err[t] = err;
        return;
      }
      mapped[r] = 1;
    }
  };
  for (unsigned t = 0; t < threads; ++t) {
    const std::size_t begin = t * chunk, end = std::min(n, begin + chunk);
    if (begin >= end) break;
    try {
      pool.emplace_back(slice, t, begin, end);
    } catch (const std::system_error&) {
      // No thread to be had (pids limit, ulimit -v): this thread maps the slice itself.
      // Slices are disjoint, so the result is the same, only slower.
      slice(t, begin, end);
    }
  }
  for (auto& th : pool) th.join();
  std::size_t first_bad = n;
  int err = 0;
  for (unsigned t = 0; t < threads; ++t) {
    if (failed_at[t] < first_bad) {
      first_bad = failed_at[t];
      err = failed_err[t];
    }
  }
  if (first_bad == n) {
    *done = n;
    return {};
  }
  BatchError e = fail(err, runs[first_bad].first, "IOMMU_IOAS_MAP");
  e.rollback_failed = !rollback_runs(runs, n, &mapped);
  *done = 0;  // already rolled back
  return e;
}

BatchError IoasMapper::map(std::span<const std::uint64_t> vas,
                           std::span<const std::uint64_t> lengths,
                           std::span<const std::uint64_t> fixed_iovas,
                           std::span<std::uint64_t> out_iovas, std::uint32_t prot,
                           const BatchOptions& options, std::span<Pin> pins) {
  const std::size_t n = vas.size();
  if (lengths.size() != n || out_iovas.size() != n || (!fixed_iovas.empty() && fixed_iovas.size() != n) ||
      (!pins.empty() && pins.size() != n) || (options.dense && !fixed_iovas.empty())) {
    return fail(EINVAL, 0, "batch shape");
  }
  if ((prot & ~kProtMask) != 0 || (prot & kProtMask) == 0) return fail(EINVAL, 0, "batch permissions");

  std::lock_guard<std::mutex> g(mu_);
  // "dense": the allocator places the batch, then it maps like a fixed-IOVA batch.
  std::vector<std::uint64_t> chosen;
  if (options.dense) {
    if (!allocator_) return fail(EINVAL, 0, "allocator");
    chosen.resize(n);
    std::size_t failed = 0;
    if (int rc = allocator_->bulk_alloc(lengths, options.align, vas, Fit::kFirst, chosen, &failed)) {
      return fail(-rc, failed, "allocator");
    }
    fixed_iovas = chosen;
  }
  const bool fixed = !fixed_iovas.empty();

  // Without coalescing or threads (the usual batch) map straight from the caller's arrays:
  // the same ioctls in the same order, with no plan to write and read back.
  if (!options.coalesce && (!fixed || options.threads <= 1 || n < kMinRunsPerThread * options.threads)) {
    return map_direct(vas, lengths, fixed_iovas, out_iovas, prot, options.dense ? &chosen : nullptr, pins);
  }
  std::vector<Run> runs = plan_runs(vas, lengths, fixed_iovas, prot, options.coalesce);

  // Parallel submission needs fixed IOVAs that do not overlap each other; otherwise the
  // result could depend on the order, so such batches go serially (same result, slower).
  // Threads only pay off when each gets enough work to cover its start-up cost.
  bool parallel = fixed && options.threads > 1 && runs.size() >= kMinRunsPerThread * options.threads;
  if (parallel) {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> spans;
    spans.reserve(runs.size());
    for (const Run& r : runs) {
      if (r.length == 0 || wraps(r.iova, r.length)) {
        parallel = false;
        break;
      }
      spans.emplace_back(r.iova, r.iova + (r.length - 1));
    }
    if (parallel) {
      std::sort(spans.begin(), spans.end());
      for (std::size_t i = 1; i < spans.size() && parallel; ++i) {
        if (spans[i].first <= spans[i - 1].second) parallel = false;
      }
    }
  }

  std::size_t done = 0;
  BatchError err = parallel ? submit_parallel(runs, options.threads, &done)
                            : submit_serial(runs, fixed, &done);
  if (err) {
    if (!parallel) err.rollback_failed = !rollback_runs(runs, done, nullptr);
    if (options.dense) {
      std::size_t ignored = 0;
      allocator_->bulk_free(chosen, &ignored);
    }
    return err;
  }
  // The table and its VA index take the batch now, in this pass: in IOVA and VA order
  // (the usual batch) both are appends, otherwise one sort of the batch and one merge.
  table_.reserve(n);
  const bool record_each = allocator_.has_value() && !options.dense;
  for (const Run& r : runs) {
    std::uint64_t offset = 0;
    for (std::size_t i = r.first; i < r.first + r.count; ++i) {
      const std::uint64_t iova = r.iova + offset;
      out_iovas[i] = iova;
      Pin pin;
      if (!pins.empty() && pins[i]) {
        pin = std::move(pins[i]);
        ++pins_;
      }
      table_.push(Segment{iova, vas[i], lengths[i], r.prot, r.iova, std::move(pin)});
      if (record_each) record(iova, lengths[i]);
      offset += lengths[i];
    }
  }
  settle();
  return {};
}

BatchError IoasMapper::map_direct(std::span<const std::uint64_t> vas,
                                  std::span<const std::uint64_t> lengths,
                                  std::span<const std::uint64_t> fixed_iovas,
                                  std::span<std::uint64_t> out_iovas, std::uint32_t prot,
                                  const std::vector<std::uint64_t>* chosen, std::span<Pin> pins) {
  const std::size_t n = vas.size();
  const bool fixed = !fixed_iovas.empty();
  for (std::size_t i = 0; i < n; ++i) {
    std::uint64_t iova = fixed ? fixed_iovas[i] : 0;
    if (int err = map_one(vas[i], lengths[i], &iova, fixed, prot)) {
      BatchError e = fail(err, i, "IOMMU_IOAS_MAP");
      for (std::size_t r = i; r-- > 0;) {
        if (unmap_one(out_iovas[r], lengths[r]) != 0) e.rollback_failed = true;
      }
      if (chosen) {
        std::size_t ignored = 0;
        allocator_->bulk_free(*chosen, &ignored);
      }
      return e;
    }
    out_iovas[i] = iova;
  }
  table_.reserve(n);
  const bool record_each = allocator_.has_value() && !chosen;
  for (std::size_t i = 0; i < n; ++i) {
    Pin pin;
    if (!pins.empty() && pins[i]) {
      pin = std::move(pins[i]);
      ++pins_;
    }
    table_.push(Segment{out_iovas[i], vas[i], lengths[i], prot, out_iovas[i], std::move(pin)});
    if (record_each) record(out_iovas[i], lengths[i]);
  }
  settle();
  return {};
}

void IoasMapper::settle() {
  std::vector<Pin> displaced;
  table_.settle(&displaced);
  for (Pin& p : displaced) release(std::move(p), nullptr);
}

void IoasMapper::record(std::uint64_t iova, std::uint64_t length) {
  // Only the parts inside the usable ranges matter: the allocator never hands out the rest.
  // The kernel refused any overlap with an existing mapping, so this cannot collide with a
  // live allocation; a failure only means the range was already unusable.
  if (length == 0 || wraps(iova, length)) return;
  const std::uint64_t last = iova + (length - 1);
  for (const IovaRange& u : usable_) {
    const std::uint64_t s = std::max(u.start, iova), l = std::min(u.last, last);
    if (s <= l) allocator_->alloc_fixed(s, l - s + 1);
  }
}

void IoasMapper::forget(std::uint64_t iova, std::uint64_t length) {
  if (!allocator_ || length == 0 || wraps(iova, length)) return;
  const std::uint64_t last = iova + (length - 1);
  for (const IovaRange& u : usable_) {
    const std::uint64_t s = std::max(u.start, iova), l = std::min(u.last, last);
    if (s > l) continue;
    // Free only what this segment recorded, exactly: never a neighbour's range.
    auto held = allocator_->find(s);
    if (held && !held->reserved && held->start == s && held->last == l) allocator_->free(s);
  }
}

void IoasMapper::release(Pin&& pin, std::vector<Pin>* released) {
  if (!pin) return;
  --pins_;
  (released ? *released : parked_).push_back(std::move(pin));
}

bool IoasMapper::translate_iova(std::uint64_t iova, std::uint64_t* va) const {
  std::lock_guard<std::mutex> g(mu_);
  return table_.lookup_iova(iova, va);
}

bool IoasMapper::translate_va(std::uint64_t va, std::uint64_t* iova) const {
  std::lock_guard<std::mutex> g(mu_);
  return table_.lookup_va(va, iova);
}

std::size_t IoasMapper::translate_va_bulk(std::span<const std::uint64_t> vas,
                                          std::span<std::uint64_t> out,
                                          std::span<std::uint8_t> found) const {
  std::lock_guard<std::mutex> g(mu_);
  return lookup_each(vas, out, found, [this](std::uint64_t k, std::uint64_t* v) {
    return table_.lookup_va(k, v);
  });
}

std::size_t IoasMapper::translate_iova_bulk(std::span<const std::uint64_t> iovas,
                                            std::span<std::uint64_t> out,
                                            std::span<std::uint8_t> found) const {
  std::lock_guard<std::mutex> g(mu_);
  return lookup_each(iovas, out, found, [this](std::uint64_t k, std::uint64_t* v) {
    return table_.lookup_iova(k, v);
  });
}

bool IoasMapper::group_hits(std::size_t* bad_entry) {
  const std::vector<Segment>& segs = table_.segments();
  const std::size_t count = segs.size();
  // Requests may overlap or come in any order: sort by segment, the first requester keeps it.
  auto by_seg = [](const Hit& a, const Hit& b) {
    return a.seg != b.seg ? a.seg < b.seg : a.entry < b.entry;
  };
  if (!std::is_sorted(hits_.begin(), hits_.end(), by_seg)) {
    std::sort(hits_.begin(), hits_.end(), by_seg);
  }
  hits_.erase(std::unique(hits_.begin(), hits_.end(),
                          [](const Hit& a, const Hit& b) { return a.seg == b.seg; }),
              hits_.end());
  // Group the hits into kernel areas (runs); every segment of a touched run must be taken,
  // so each group starts at its run's first segment and holds all of the run.
  victims_.clear();
  bool adopted = false;
  for (std::size_t h = 0; h < hits_.size();) {
    const std::uint64_t run = segs[hits_[h].seg].run_iova;
    const std::size_t first = h;
    const std::size_t head = segs[hits_[h].seg].iova == run ? hits_[h].seg : table_.find(run);
    Victim v{head, run, 0, hits_[h].entry};
    for (std::size_t j = head; j < count && segs[j].run_iova == run; ++j) {
      if (h >= hits_.size() || hits_[h].seg != j) {
        *bad_entry = hits_[first].entry;
        return false;
      }
      v.length += segs[j].length;
      ++h;
    }
    if (h == first) {
      *bad_entry = hits_[first].entry;
      return false;
    }
    adopted |= segs[head].va == 0;
    victims_.push_back(v);
  }
  // Adopted areas cannot be re-mapped if a later unmap fails: take them last.
  if (adopted) {
    std::stable_partition(victims_.begin(), victims_.end(),
                          [&](const Victim& v) { return segs[v.head].va != 0; });
  }
  return true;
}

BatchError IoasMapper::unmap(std::span<const std::uint64_t> iovas,
                             std::span<const std::uint64_t> lengths, std::vector<Pin>* released,
                             std::uint64_t* removed_bytes) {
  const std::size_t n = iovas.size();
  if (lengths.size() != n) return fail(EINVAL, 0, "batch shape");
  std::lock_guard<std::mutex> g(mu_);
  const std::vector<Segment>& segs = table_.segments();
  const std::size_t count = segs.size();

  // Validate everything first, so a refusal changes nothing. The kernel only removes whole
  // areas, and every run is one area: a request must take all of a run or none of it.
  // The usual batch (each request one whole uncoalesced mapping, in IOVA order) is settled
  // in this one pass straight into victims_; anything else collects hits_ and is sorted
  // and grouped below. Scratch arrays are kept between calls: this path is measured
  // against a bare loop of unmap ioctls.
  hits_.clear();
  victims_.clear();
  victims_.reserve(n);
  bool simple = true;  // so far every hit is a whole one-segment area with a VA, in order
  std::size_t next = count;
  for (std::size_t i = 0; i < n; ++i) {
    if (lengths[i] == 0) return fail(EINVAL, i, "IOMMU_IOAS_UNMAP");
    if (wraps(iovas[i], lengths[i])) return fail(EOVERFLOW, i, "IOMMU_IOAS_UNMAP");
    const std::uint64_t last = iovas[i] + (lengths[i] - 1);
    // Batches usually come in IOVA order: try where the previous request stopped first (a
    // segment starting exactly there cannot be covered by an earlier one).
    std::size_t j = next;
    if (j >= count || segs[j].iova != iovas[i]) {
      j = table_.upper_bound(iovas[i]);
      if (j > 0 && segs[j - 1].iova + segs[j - 1].length > iovas[i]) --j;
    }
    std::size_t found = 0;
    for (; j < count && segs[j].iova <= last; ++j, ++found) {
      const Segment& s = segs[j];
      // A segment sticking out of the range would have to be split: the kernel says ENOENT.
      if (s.iova < iovas[i] || s.iova + (s.length - 1) > last) return fail(ENOENT, i, "IOMMU_IOAS_UNMAP");
      if (simple) {
        const bool alone = s.run_iova == s.iova && s.va != 0 &&
                           (j + 1 == count || segs[j + 1].run_iova != s.iova);
        if (alone && (victims_.empty() || victims_.back().head < j)) {
          victims_.push_back(Victim{j, s.iova, s.length, i});
          continue;
        }
        simple = false;
        hits_.reserve(n);
        for (const Victim& v : victims_) hits_.push_back(Hit{v.head, v.entry});
      }
      hits_.push_back(Hit{j, i});
    }
    if (found == 0) return fail(ENOENT, i, "IOMMU_IOAS_UNMAP");
    next = j;
  }
  if (std::size_t bad = 0; !simple && !group_hits(&bad)) return fail(EINVAL, bad, "coalesced");

  for (std::size_t k = 0; k < victims_.size(); ++k) {
    if (int err = unmap_one(victims_[k].iova, victims_[k].length)) {
      BatchError e = fail(err, victims_[k].entry, "IOMMU_IOAS_UNMAP");
      for (std::size_t r = k; r-- > 0;) {
        const Segment& h = segs[victims_[r].head];
        std::uint64_t iova = h.iova;
        if (h.va == 0 || map_one(h.va, victims_[r].length, &iova, true, h.prot) != 0) {
          e.rollback_failed = true;
        }
      }
      return e;
    }
  }
  std::uint64_t bytes = 0;
  for (const Victim& v : victims_) bytes += v.length;
  auto drop = [&](std::size_t seg) {
    Segment& s = table_.at(seg);
    if (allocator_) forget(s.iova, s.length);
    if (s.pin) release(std::move(s.pin), released);
  };
  if (simple) {
    if (allocator_ || pins_) {
      if (released && pins_) released->reserve(released->size() + victims_.size());
      for (const Victim& v : victims_) drop(v.head);
    }
    table_.erase(victims_, [](const Victim& v) { return v.head; });
  } else {
    if (released && pins_) released->reserve(released->size() + hits_.size());
    for (const Hit& h : hits_) drop(h.seg);
    table_.erase(hits_, [](const Hit& h) { return h.seg; });
  }
  if (removed_bytes) *removed_bytes = bytes;
  return {};
}

void IoasMapper::adopt(std::uint64_t iova, std::uint64_t length, std::uint32_t prot, Pin pin) {
  std::lock_guard<std::mutex> g(mu_);
  adopt_locked(iova, length, prot, std::move(pin));
}

void IoasMapper::adopt_locked(std::uint64_t iova, std::uint64_t length, std::uint32_t prot,
                              Pin pin) {
  if (pin) ++pins_;
  // The kernel refuses to map over an area, so an entry already at `iova` is only ever a
  // leftover: settle() replaces it and parks its pin, never dropped without the caller's lock.
  table_.reserve(1);
  table_.push(Segment{iova, 0, length, prot, iova, std::move(pin)});
  settle();
  if (allocator_) record(iova, length);
}

Pin IoasMapper::pins_in_locked(std::uint64_t iova, std::uint64_t length) const {
  auto shared = std::make_shared<std::vector<Pin>>();
  if (length == 0) return {};
  const std::uint64_t last = wraps(iova, length) ? std::numeric_limits<std::uint64_t>::max()
                                                 : iova + (length - 1);
  const std::vector<Segment>& segs = table_.segments();
  std::size_t j = table_.upper_bound(iova);
  if (j > 0) --j;
  for (; j < segs.size() && segs[j].iova <= last; ++j) {
    const Segment& s = segs[j];
    if (s.iova + (s.length - 1) >= iova && s.pin) shared->push_back(s.pin);
  }
  if (shared->empty()) return {};
  return shared;
}

int IoasMapper::copy_from(const IoasMapper& src, std::uint64_t src_iova, std::uint64_t length,
                          std::uint64_t* iova, bool fixed, std::uint32_t prot) {
  if ((prot & ~kProtMask) != 0 || (prot & kProtMask) == 0) return EINVAL;
  // Both tables must stay still between the kernel's copy and the recording of its pins.
  std::unique_lock<std::mutex> mine(mu_, std::defer_lock);
  std::unique_lock<std::mutex> theirs(src.mu_, std::defer_lock);
  if (&src == this) {
    mine.lock();
  } else {
    std::lock(mine, theirs);
  }
  uapi::iommu_ioas_copy cmd{};
  cmd.size = sizeof cmd;
  cmd.flags = prot | (fixed ? uapi::IOMMU_IOAS_MAP_FIXED_IOVA : 0);
  cmd.dst_ioas_id = ioas_id_;
  cmd.src_ioas_id = src.ioas_id_;
  cmd.length = length;
  cmd.dst_iova = fixed ? *iova : 0;
  cmd.src_iova = src_iova;
  if (long rc = kernel_.ioctl(fd_, uapi::IOMMU_IOAS_COPY, &cmd); rc < 0) return static_cast<int>(-rc);
  adopt_locked(cmd.dst_iova, length, prot, src.pins_in_locked(src_iova, length));
  *iova = cmd.dst_iova;
  return 0;
}

int IoasMapper::map_file(int file_fd, std::uint64_t offset, std::uint64_t length,
                         std::uint64_t* iova, bool fixed, std::uint32_t prot) {
  if ((prot & ~kProtMask) != 0 || (prot & kProtMask) == 0) return EINVAL;
  std::lock_guard<std::mutex> g(mu_);
  uapi::iommu_ioas_map_file cmd{};
  cmd.size = sizeof cmd;
  cmd.flags = prot | (fixed ? uapi::IOMMU_IOAS_MAP_FIXED_IOVA : 0);
  cmd.ioas_id = ioas_id_;
  cmd.fd = file_fd;
  cmd.start = offset;
  cmd.length = length;
  cmd.iova = fixed ? *iova : 0;
  if (long rc = kernel_.ioctl(fd_, uapi::IOMMU_IOAS_MAP_FILE, &cmd); rc < 0) return static_cast<int>(-rc);
  adopt_locked(cmd.iova, length, prot, {});
  *iova = cmd.iova;
  return 0;
}

std::vector<Pin> IoasMapper::take_released() {
  std::lock_guard<std::mutex> g(mu_);
  return std::exchange(parked_, {});
}

int IoasMapper::enable_allocator(std::span<const IovaRange> usable) {
  std::lock_guard<std::mutex> g(mu_);
  if (allocator_) return 0;
  allocator_.emplace();
  if (int rc = allocator_->restrict_to(usable)) {
    allocator_.reset();
    return rc;
  }
  usable_.assign(usable.begin(), usable.end());
  for (const Segment& s : table_.segments()) record(s.iova, s.length);
  return 0;
}

bool IoasMapper::has_allocator() const {
  std::lock_guard<std::mutex> g(mu_);
  return allocator_.has_value();
}

std::vector<IovaRange> IoasMapper::allocations() const {
  std::lock_guard<std::mutex> g(mu_);
  std::vector<IovaRange> out;
  if (!allocator_) return out;
  allocator_->for_each([&](const IovaEntry& e) {
    if (!e.reserved) out.push_back(IovaRange{e.start, e.last});
  });
  return out;
}

std::size_t IoasMapper::pin_count() const {
  std::lock_guard<std::mutex> g(mu_);
  return pins_;
}

IoasMapper::~IoasMapper() {
  // Whatever is still mapped may still be reached by a device: keep its memory referenced
  // for the life of the process rather than free it under the kernel (see the header).
  auto leak = [](Pin& p) {
    if (p) new Pin(std::move(p));  // NOLINT: deliberate, documented leak
  };
  for (std::size_t i = 0; i < table_.size(); ++i) leak(table_.at(i).pin);
  for (Pin& p : parked_) leak(p);
}

void IoasMapper::forget_all(std::vector<Pin>* released) {
  std::lock_guard<std::mutex> g(mu_);
  for (std::size_t i = 0; i < table_.size(); ++i) release(std::move(table_.at(i).pin), released);
  table_.clear();
  if (allocator_) {
    allocator_.emplace();
    if (allocator_->restrict_to(usable_) != 0) allocator_.reset();
  }
}

int IoasMapper::unmap_all(std::uint64_t* unmapped, std::vector<Pin>* released) {
  std::lock_guard<std::mutex> g(mu_);
  uapi::iommu_ioas_unmap cmd{};
  cmd.size = sizeof cmd;
  cmd.ioas_id = ioas_id_;
  cmd.iova = 0;
  cmd.length = std::numeric_limits<std::uint64_t>::max();
  long rc = kernel_.ioctl(fd_, uapi::IOMMU_IOAS_UNMAP, &cmd);
  if (rc < 0) return static_cast<int>(rc);
  for (std::size_t i = 0; i < table_.size(); ++i) release(std::move(table_.at(i).pin), released);
  table_.clear();
  if (allocator_) {
    // Everything is gone: start again from the usable ranges alone.
    allocator_.emplace();
    if (allocator_->restrict_to(usable_) != 0) allocator_.reset();
  }
  *unmapped = cmd.length;
  return 0;
}

std::size_t IoasMapper::segment_count() const {
  std::lock_guard<std::mutex> g(mu_);
  return table_.size();
}

std::vector<SegmentInfo> IoasMapper::segments() const {
  std::lock_guard<std::mutex> g(mu_);
  std::vector<SegmentInfo> out;
  out.reserve(table_.size());
  for (const Segment& s : table_.segments()) {
    out.push_back({s.iova, s.va, s.length, s.prot, s.run_iova, s.pin != nullptr});
  }
  return out;
}

}  // namespace fastmap::engine
