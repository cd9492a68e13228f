#include "engine/map_engine.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <limits>
#include <system_error>
#include <thread>

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
                           const BatchOptions& options) {
  const std::size_t n = vas.size();
  if (lengths.size() != n || out_iovas.size() != n || (!fixed_iovas.empty() && fixed_iovas.size() != n)) {
    return fail(EINVAL, 0, "batch shape");
  }
  if ((prot & ~kProtMask) != 0 || (prot & kProtMask) == 0) return fail(EINVAL, 0, "batch permissions");
  const bool fixed = !fixed_iovas.empty();

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

  std::lock_guard<std::mutex> g(mu_);
  std::size_t done = 0;
  BatchError err = parallel ? submit_parallel(runs, options.threads, &done)
                            : submit_serial(runs, fixed, &done);
  if (err) {
    if (!parallel) err.rollback_failed = !rollback_runs(runs, done, nullptr);
    return err;
  }
  if (pending_.capacity() < pending_.size() + n) {
    pending_.reserve(std::max(pending_.size() + n, 2 * pending_.capacity()));  // stay geometric
  }
  for (const Run& r : runs) {
    std::uint64_t offset = 0;
    for (std::size_t i = r.first; i < r.first + r.count; ++i) {
      const std::uint64_t iova = r.iova + offset;
      out_iovas[i] = iova;
      pending_.push_back(Segment{iova, vas[i], lengths[i], r.prot, r.iova});
      max_length_ = std::max(max_length_, lengths[i]);
      offset += lengths[i];
    }
  }
  return {};
}

void IoasMapper::index_pending() const {
  if (pending_.empty()) return;
  by_va_stale_ = true;
  std::sort(pending_.begin(), pending_.end(),
            [](const Segment& a, const Segment& b) { return a.iova < b.iova; });
  // Sorted keys go in with a hint: amortized O(1) each when they extend the index.
  auto hint = segments_.end();
  for (const Segment& s : pending_) hint = std::next(segments_.insert_or_assign(hint, s.iova, s));
  pending_.clear();
  pending_.shrink_to_fit();
}

bool IoasMapper::translate_iova(std::uint64_t iova, std::uint64_t* va) const {
  std::lock_guard<std::mutex> g(mu_);
  index_pending();
  auto it = segments_.upper_bound(iova);
  if (it == segments_.begin()) return false;
  const Segment& s = std::prev(it)->second;
  if (iova - s.iova >= s.length || s.va == 0) return false;
  *va = s.va + (iova - s.iova);
  return true;
}

bool IoasMapper::translate_va(std::uint64_t va, std::uint64_t* iova) const {
  std::lock_guard<std::mutex> g(mu_);
  index_pending();
  if (by_va_stale_) {
    by_va_.clear();
    for (const auto& [seg_iova, s] : segments_) {
      if (s.va != 0) by_va_.emplace(s.va, seg_iova);
    }
    by_va_stale_ = false;
  }
  // Segments may overlap in VA; scan back from the last one starting at or below `va`.
  // Segment lengths are bounded by what was mapped, so stop once nothing earlier can reach.
  auto it = by_va_.upper_bound(va);
  bool found = false;
  std::uint64_t best = 0;
  while (it != by_va_.begin()) {
    --it;
    const Segment& s = segments_.at(it->second);
    if (va - s.va < s.length && (!found || s.iova + (va - s.va) < best)) {
      best = s.iova + (va - s.va);
      found = true;
    }
    if (va - it->first >= max_length_) break;
  }
  if (found) *iova = best;
  return found;
}

BatchError IoasMapper::unmap(std::span<const std::uint64_t> iovas,
                             std::span<const std::uint64_t> lengths,
                             std::vector<std::uint64_t>* removed_segments) {
  const std::size_t n = iovas.size();
  if (lengths.size() != n) return fail(EINVAL, 0, "batch shape");
  std::lock_guard<std::mutex> g(mu_);
  index_pending();

  // Validate everything first, so a refusal changes nothing. The kernel only removes whole
  // areas, and every run is one area: a request must take all of a run or none of it.
  struct Victim {
    std::uint64_t run_iova;
    std::uint64_t va;
    std::uint64_t length;
    std::uint32_t prot;
  };
  std::map<std::uint64_t, std::size_t> taken;  // segment iova -> requesting entry
  for (std::size_t i = 0; i < n; ++i) {
    if (lengths[i] == 0) return fail(EINVAL, i, "IOMMU_IOAS_UNMAP");
    if (wraps(iovas[i], lengths[i])) return fail(EOVERFLOW, i, "IOMMU_IOAS_UNMAP");
    const std::uint64_t last = iovas[i] + (lengths[i] - 1);
    auto it = segments_.upper_bound(iovas[i]);
    if (it != segments_.begin()) {
      auto prev = std::prev(it);
      if (prev->second.iova + prev->second.length > iovas[i]) it = prev;
    }
    std::size_t found = 0;
    for (; it != segments_.end() && it->first <= last; ++it) {
      const Segment& s = it->second;
      // A segment sticking out of the range would have to be split: the kernel says ENOENT.
      if (s.iova < iovas[i] || s.iova + (s.length - 1) > last) return fail(ENOENT, i, "IOMMU_IOAS_UNMAP");
      if (!taken.emplace(s.iova, i).second) continue;
      ++found;
    }
    if (found == 0) return fail(ENOENT, i, "IOMMU_IOAS_UNMAP");
  }
  std::map<std::uint64_t, Victim> runs;  // run iova -> whole run
  std::map<std::uint64_t, std::size_t> run_entry;
  for (const auto& [seg_iova, entry] : taken) {
    const Segment& s = segments_.at(seg_iova);
    auto [rit, inserted] = runs.try_emplace(s.run_iova, Victim{s.run_iova, 0, 0, s.prot});
    if (inserted) run_entry[s.run_iova] = entry;
    if (s.iova == s.run_iova) rit->second.va = s.va;
    rit->second.length += s.length;
  }
  // Every segment of a touched run must be taken.
  for (const auto& [run_iova, v] : runs) {
    auto it = segments_.find(run_iova);
    std::uint64_t run_len = 0;
    for (; it != segments_.end() && it->second.run_iova == run_iova; ++it) run_len += it->second.length;
    if (run_len != v.length) return fail(EINVAL, run_entry[run_iova], "coalesced");
  }

  // Adopted areas cannot be re-mapped if a later unmap fails: take them last.
  std::vector<Victim> order;
  order.reserve(runs.size());
  for (const auto& [run_iova, v] : runs) if (v.va != 0) order.push_back(v);
  for (const auto& [run_iova, v] : runs) if (v.va == 0) order.push_back(v);
  std::vector<Victim> removed;
  removed.reserve(runs.size());
  for (const Victim& v : order) {
    const std::uint64_t run_iova = v.run_iova;
    if (int err = unmap_one(v.run_iova, v.length)) {
      BatchError e = fail(err, run_entry[run_iova], "IOMMU_IOAS_UNMAP");
      for (auto r = removed.rbegin(); r != removed.rend(); ++r) {
        std::uint64_t iova = r->run_iova;
        if (r->va == 0 || map_one(r->va, r->length, &iova, true, r->prot) != 0) {
          e.rollback_failed = true;
        }
      }
      return e;
    }
    removed.push_back(v);
  }
  if (removed_segments) removed_segments->reserve(removed_segments->size() + taken.size());
  for (const auto& [seg_iova, entry] : taken) {
    segments_.erase(seg_iova);
    if (removed_segments) removed_segments->push_back(seg_iova);
  }
  by_va_stale_ = true;
  return {};
}

void IoasMapper::adopt(std::uint64_t iova, std::uint64_t length, std::uint32_t prot) {
  std::lock_guard<std::mutex> g(mu_);
  index_pending();
  segments_[iova] = Segment{iova, 0, length, prot, iova};
}

int IoasMapper::unmap_all(std::uint64_t* unmapped) {
  std::lock_guard<std::mutex> g(mu_);
  uapi::iommu_ioas_unmap cmd{};
  cmd.size = sizeof cmd;
  cmd.ioas_id = ioas_id_;
  cmd.iova = 0;
  cmd.length = std::numeric_limits<std::uint64_t>::max();
  long rc = kernel_.ioctl(fd_, uapi::IOMMU_IOAS_UNMAP, &cmd);
  if (rc < 0) return static_cast<int>(rc);
  segments_.clear();
  pending_.clear();
  by_va_stale_ = true;
  *unmapped = cmd.length;
  return 0;
}

std::size_t IoasMapper::segment_count() const {
  std::lock_guard<std::mutex> g(mu_);
  return segments_.size() + pending_.size();
}

std::vector<Segment> IoasMapper::segments() const {
  std::lock_guard<std::mutex> g(mu_);
  index_pending();
  std::vector<Segment> out;
  out.reserve(segments_.size());
  for (const auto& [iova, s] : segments_) out.push_back(s);
  return out;
}

}  // namespace fastmap::engine
