// Domain: IOPTEs held as runs. A run is a stretch of equally sized IOPTEs that are
// contiguous in both IOVA and VA with one prot, plus one dirty bit per IOPTE. 1 TiB of
// 2 MiB IOPTEs mapped in one call is one run with a 64 KiB bitset, so mapping, DMA lookup
// (one ordered-map search) and the dirty walk (a word at a time) stay cheap at that scale.
//
// Locking: `mu` is a reader/writer lock. DMA, translate and mark_dirty take it shared and
// set dirty bits with atomic ORs; map, unmap, enabling tracking and the dirty walk (which
// clears bits) take it exclusive.
#include "sim/iommu/domain.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <new>
#include <shared_mutex>
#include <vector>

#include "sim/core/user_memory.h"

namespace fastmap::sim {

namespace {

constexpr std::size_t kMaxFaults = 4096;  // like a ring of fault records: oldest dropped
constexpr std::uint64_t kAllOnes = std::numeric_limits<std::uint64_t>::max();

std::uint64_t low_bit(std::uint64_t x) { return x & (~x + 1); }
// Every power of two <= p (p itself a power of two), without overflowing at 2^63.
std::uint64_t sizes_up_to(std::uint64_t p) { return p >> 63 ? kAllOnes : (p << 1) - 1; }
std::size_t words_for(std::uint64_t nbits) { return static_cast<std::size_t>((nbits + 63) / 64); }
// Mask of bits [lo, hi] within one word.
std::uint64_t word_mask(unsigned lo, unsigned hi) {
  std::uint64_t upto = hi == 63 ? kAllOnes : (1ull << (hi + 1)) - 1;
  return upto & ~((1ull << lo) - 1);
}

struct Run {
  std::uint64_t va = 0;
  std::uint64_t n = 0;  // IOPTEs
  unsigned shift = 12;  // log2 of the IOPTE size
  int prot = 0;
  // n bits, LSB first; bits past n stay zero so whole words can be moved around.
  std::vector<std::uint64_t> dirty;

  std::uint64_t bytes() const { return n << shift; }
};

// 64 bits of `v` starting at bit `pos` (zeros past the end).
std::uint64_t extract64(const std::vector<std::uint64_t>& v, std::uint64_t pos) {
  std::size_t w = static_cast<std::size_t>(pos / 64);
  unsigned off = static_cast<unsigned>(pos % 64);
  std::uint64_t x = w < v.size() ? v[w] >> off : 0;
  if (off != 0 && w + 1 < v.size()) x |= v[w + 1] << (64 - off);
  return x;
}

void clear_tail(Run& r) {
  unsigned used = static_cast<unsigned>(r.n % 64);
  if (used != 0 && !r.dirty.empty()) r.dirty.back() &= (1ull << used) - 1;
}

// IOPTEs [first, first+count) of `r` as a run of their own.
Run slice(const Run& r, std::uint64_t first, std::uint64_t count) {
  Run out;
  out.va = r.va + (first << r.shift);
  out.n = count;
  out.shift = r.shift;
  out.prot = r.prot;
  out.dirty.resize(words_for(count));
  for (std::size_t i = 0; i < out.dirty.size(); ++i) out.dirty[i] = extract64(r.dirty, first + 64 * i);
  clear_tail(out);
  return out;
}

// Append `s` (which follows `r` in IOVA and VA) to `r`.
void append(Run& r, const Run& s) {
  std::uint64_t base = r.n;
  r.n += s.n;
  r.dirty.resize(words_for(r.n), 0);
  unsigned off = static_cast<unsigned>(base % 64);
  std::size_t w0 = static_cast<std::size_t>(base / 64);
  for (std::size_t i = 0; i < s.dirty.size(); ++i) {
    std::uint64_t x = s.dirty[i];
    if (x == 0) continue;
    r.dirty[w0 + i] |= x << off;
    if (off != 0 && w0 + i + 1 < r.dirty.size()) r.dirty[w0 + i + 1] |= x >> (64 - off);
  }
}

// Set bits [a, b] with atomic ORs: DMA on several threads may hit the same word while
// holding the lock shared.
void set_bits_atomic(std::vector<std::uint64_t>& v, std::uint64_t a, std::uint64_t b) {
  for (std::uint64_t w = a / 64; w <= b / 64; ++w) {
    unsigned lo = w == a / 64 ? static_cast<unsigned>(a % 64) : 0;
    unsigned hi = w == b / 64 ? static_cast<unsigned>(b % 64) : 63;
    std::atomic_ref<std::uint64_t>(v[static_cast<std::size_t>(w)])
        .fetch_or(word_mask(lo, hi), std::memory_order_relaxed);
  }
}

}  // namespace

struct Domain::Impl {
  IommuModel model;
  bool dirty_capable;
  std::uint64_t min_page;

  mutable std::shared_mutex mu;
  std::map<std::uint64_t, Run> runs;  // keyed by the run's first IOVA
  bool tracking = false;
  std::uint64_t mapped = 0;
  std::uint64_t ioptes = 0;

  mutable std::mutex fault_mu;
  std::deque<DmaFault> faults;

  Impl(const IommuModel& m, bool dirty)
      : model(m), dirty_capable(dirty), min_page(low_bit(m.pgsize_bitmap)) {}

  static std::uint64_t last_of(std::map<std::uint64_t, Run>::const_iterator it) {
    return it->first + it->second.bytes() - 1;
  }

  // The run holding `iova`, or runs.end().
  std::map<std::uint64_t, Run>::iterator find(std::uint64_t iova) {
    auto it = runs.upper_bound(iova);
    if (it == runs.begin()) return runs.end();
    --it;
    return iova <= last_of(it) ? it : runs.end();
  }

  // The first run whose last byte is >= iova.
  std::map<std::uint64_t, Run>::iterator first_ending_at_or_after(std::uint64_t iova) {
    auto it = runs.upper_bound(iova);
    if (it != runs.begin()) {
      auto p = std::prev(it);
      if (last_of(p) >= iova) return p;
    }
    return it;
  }

  static bool joins(std::uint64_t key, const Run& r, std::uint64_t next_iova, const Run& s) {
    return key + r.bytes() == next_iova && r.shift == s.shift && r.prot == s.prot &&
           r.va + r.bytes() == s.va;
  }

  // Insert a new run (dirty bits clear), merging with its neighbours when they continue it.
  void insert(std::uint64_t iova, Run run) {
    auto next = runs.lower_bound(iova);
    std::map<std::uint64_t, Run>::iterator at;
    if (next != runs.begin() && joins(std::prev(next)->first, std::prev(next)->second, iova, run)) {
      at = std::prev(next);
      append(at->second, run);
    } else {
      at = runs.emplace_hint(next, iova, std::move(run));
    }
    auto after = std::next(at);
    if (after != runs.end() && joins(at->first, at->second, after->first, after->second)) {
      append(at->second, after->second);
      runs.erase(after);
    }
  }

  // The IOPTE size iommu_pgsize would pick at (iova, va) for `left` bytes, and how many of
  // them to use before a larger size becomes possible.
  void pick(std::uint64_t iova, std::uint64_t va, std::uint64_t left, bool largest,
            std::uint64_t* pg, std::uint64_t* count) const {
    std::uint64_t bitmap = model.pgsize_bitmap;
    if (!largest) {
      *pg = min_page;
      *count = left / min_page;
      return;
    }
    std::uint64_t cand = bitmap & sizes_up_to(std::bit_floor(left));
    if (std::uint64_t align = iova | va) cand &= sizes_up_to(low_bit(align));
    *pg = std::bit_floor(cand);  // min_page divides everything, so cand is never 0
    unsigned shift = static_cast<unsigned>(std::countr_zero(*pg));
    *count = left >> shift;
    std::uint64_t bigger = bitmap & ~sizes_up_to(*pg);
    if (bigger != 0) {
      std::uint64_t q = low_bit(bigger);
      if (((iova ^ va) & (q - 1)) == 0) {
        std::uint64_t to_align = (q - (iova & (q - 1))) & (q - 1);
        if (to_align != 0) *count = std::min(*count, to_align >> shift);
      }
    }
  }

  // Removes every IOPTE intersecting [iova, last]. Whole IOPTEs go, even when the range
  // only clips one (VT-d unmaps a large page it was asked to cut into, and reports its full
  // size). The runs left over at either end are built before anything changes, so a
  // bad_alloc leaves the table as it was.
  std::uint64_t unmap_locked(std::uint64_t iova, std::uint64_t last) {
    struct Cut {
      std::map<std::uint64_t, Run>::iterator it;
      std::uint64_t first, final;  // IOPTE indexes removed
    };
    std::vector<Cut> cuts;
    std::map<std::uint64_t, Run> tails;  // nodes allocated now, spliced in by merge()
    for (auto it = first_ending_at_or_after(iova); it != runs.end() && it->first <= last; ++it) {
      const Run& r = it->second;
      const std::uint64_t key = it->first;
      std::uint64_t first = (std::max(iova, key) - key) >> r.shift;
      std::uint64_t final = (std::min(last, last_of(it)) - key) >> r.shift;
      cuts.push_back({it, first, final});
      if (final + 1 < r.n) {
        tails.emplace(key + ((final + 1) << r.shift), slice(r, final + 1, r.n - final - 1));
      }
    }
    std::uint64_t removed = 0;
    for (const Cut& c : cuts) {
      Run& r = c.it->second;
      const std::uint64_t count = c.final - c.first + 1;
      removed += count << r.shift;
      ioptes -= count;
      if (c.first > 0) {
        r.n = c.first;
        r.dirty.resize(words_for(c.first));  // shrinking: no allocation
        clear_tail(r);
      } else {
        runs.erase(c.it);
      }
    }
    runs.merge(tails);
    mapped -= removed;
    return removed;
  }

  void record(std::uint64_t iova, bool write, int error) {
    std::lock_guard<std::mutex> g(fault_mu);
    if (faults.size() >= kMaxFaults) faults.pop_front();
    faults.push_back(DmaFault{iova, write, error});
  }

  // Copy one translated stretch; on a process-memory failure retry IOPTE by IOPTE so that
  // only the IOPTEs whose memory is gone fault. Returns 0 or -EFAULT; sets dirty bits of
  // the IOPTEs written.
  int copy(Run& r, std::uint64_t key, std::uint64_t iova, char* buf, std::size_t len, bool write) {
    auto mark = [&](std::uint64_t a, std::size_t n) {
      if (write && tracking) set_bits_atomic(r.dirty, (a - key) >> r.shift, (a + n - 1 - key) >> r.shift);
    };
    auto one = [&](std::uint64_t a, char* b, std::size_t n) {
      std::uint64_t va = r.va + (a - key);
      return write ? copy_to_user(va, b, n) : copy_from_user(b, va, n);
    };
    if (one(iova, buf, len) == 0) {
      mark(iova, len);
      return 0;
    }
    int rc = 0;
    const std::uint64_t pg = 1ull << r.shift;
    while (len > 0) {
      std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(len, pg - (iova & (pg - 1))));
      if (one(iova, buf, n) == 0) {
        mark(iova, n);
      } else {
        record(iova, write, -EFAULT);
        if (!write) std::memset(buf, 0, n);
        rc = -EFAULT;
      }
      iova += n;
      buf += n;
      len -= n;
    }
    return rc;
  }

  int access(std::uint64_t iova, char* buf, std::size_t len, bool write) {
    if (len == 0) return 0;
    if (iova + (len - 1) < iova) {  // the DMA runs off the top of the address space
      record(iova, write, -EFAULT);
      if (!write) std::memset(buf, 0, len);
      return -EFAULT;
    }
    std::shared_lock<std::shared_mutex> g(mu);
    int rc = 0;
    const int need = write ? kIommuWrite : kIommuRead;
    while (len > 0) {
      auto next = runs.upper_bound(iova);
      auto it = runs.end();
      if (next != runs.begin() && iova <= last_of(std::prev(next))) it = std::prev(next);
      std::uint64_t stretch_last;  // last IOVA handled the same way as `iova`
      int err = 0;
      if (it == runs.end()) {
        stretch_last = next == runs.end() ? kAllOnes : next->first - 1;
        err = -EFAULT;
      } else {
        stretch_last = last_of(it);
        if (!(it->second.prot & need)) err = -EPERM;
      }
      std::uint64_t avail = stretch_last - iova;  // bytes after the first, avoids overflow
      std::size_t n = avail >= len - 1 ? len : static_cast<std::size_t>(avail + 1);
      if (err != 0) {
        // One record per faulting stretch; nothing moves (a read sees zeros, as an
        // unassigned address reads in QEMU).
        record(iova, write, err);
        if (!write) std::memset(buf, 0, n);
      } else {
        err = copy(it->second, it->first, iova, buf, n, write);
      }
      if (rc == 0) rc = err;
      iova += n;
      buf += n;
      len -= n;
    }
    return rc;
  }
};

Domain::Domain(const IommuModel& model, bool dirty_capable)
    : impl_(std::make_unique<Impl>(model, dirty_capable)) {}

Domain::~Domain() = default;

const IommuModel& Domain::model() const noexcept { return impl_->model; }
std::uint64_t Domain::min_page_size() const noexcept { return impl_->min_page; }
bool Domain::dirty_capable() const noexcept { return impl_->dirty_capable; }

int Domain::map(std::uint64_t iova, std::uint64_t va, std::uint64_t len, int prot,
                bool largest_pages) noexcept {
  Impl& d = *impl_;
  if (len == 0 || ((iova | va | len) & (d.min_page - 1)) != 0) return -EINVAL;
  if (iova + (len - 1) < iova || va + (len - 1) < va) return -EINVAL;
  if (iova < d.model.aperture_start || iova + (len - 1) > d.model.aperture_last) return -EINVAL;
  std::unique_lock<std::shared_mutex> g(d.mu);
  auto it = d.first_ending_at_or_after(iova);
  if (it != d.runs.end() && it->first <= iova + (len - 1)) return -EEXIST;
  std::uint64_t done = 0;
  try {
    while (done < len) {
      std::uint64_t pg = 0, count = 0;
      d.pick(iova + done, va + done, len - done, largest_pages, &pg, &count);
      Run run;
      run.va = va + done;
      run.n = count;
      run.shift = static_cast<unsigned>(std::countr_zero(pg));
      run.prot = prot;
      run.dirty.assign(words_for(count), 0);
      d.insert(iova + done, std::move(run));
      d.ioptes += count;
      d.mapped += count * pg;
      done += count * pg;
    }
  } catch (const std::bad_alloc&) {
    if (done != 0) d.unmap_locked(iova, iova + done - 1);
    return -ENOMEM;
  }
  return 0;
}

std::uint64_t Domain::unmap(std::uint64_t iova, std::uint64_t len) noexcept {
  if (len == 0) return 0;
  std::uint64_t last = iova + (len - 1) < iova ? kAllOnes : iova + (len - 1);
  std::unique_lock<std::shared_mutex> g(impl_->mu);
  try {
    return impl_->unmap_locked(iova, last);
  } catch (const std::bad_alloc&) {
    return 0;  // splitting a run needs memory; the table is unchanged
  }
}

int Domain::dma_read(std::uint64_t iova, void* dst, std::size_t len) noexcept {
  return impl_->access(iova, static_cast<char*>(dst), len, false);
}

int Domain::dma_write(std::uint64_t iova, const void* src, std::size_t len) noexcept {
  // access() only reads from the buffer when writing to memory.
  return impl_->access(iova, const_cast<char*>(static_cast<const char*>(src)), len, true);
}

long long Domain::translate(std::uint64_t iova, int prot) const noexcept {
  std::shared_lock<std::shared_mutex> g(impl_->mu);
  auto it = impl_->find(iova);
  if (it == impl_->runs.end()) return -EFAULT;
  if ((prot & ~it->second.prot) != 0) return -EPERM;
  return static_cast<long long>(it->second.va + (iova - it->first));
}

int Domain::set_dirty_tracking(bool enable) noexcept {
  if (!impl_->dirty_capable) return -EOPNOTSUPP;
  std::unique_lock<std::shared_mutex> g(impl_->mu);
  // Enabling starts from a clean snapshot: iommufd clears every dirty bit (without
  // reporting) before turning tracking on, and does so again on a repeated enable.
  if (enable) {
    for (auto& [key, run] : impl_->runs) std::fill(run.dirty.begin(), run.dirty.end(), 0);
  }
  impl_->tracking = enable;
  return 0;
}

bool Domain::dirty_tracking() const noexcept {
  std::shared_lock<std::shared_mutex> g(impl_->mu);
  return impl_->tracking;
}

int Domain::mark_dirty(std::uint64_t iova) noexcept {
  std::shared_lock<std::shared_mutex> g(impl_->mu);
  auto it = impl_->find(iova);
  if (it == impl_->runs.end()) return 0;
  std::uint64_t idx = (iova - it->first) >> it->second.shift;
  set_bits_atomic(it->second.dirty, idx, idx);
  return 1;
}

void Domain::for_each_dirty(std::uint64_t iova, std::uint64_t len, bool no_clear,
                            void (*cb)(void*, std::uint64_t, std::uint64_t), void* ctx) {
  if (len == 0) return;
  const std::uint64_t last = iova + (len - 1) < iova ? kAllOnes : iova + (len - 1);
  Impl& d = *impl_;
  std::unique_lock<std::shared_mutex> g(d.mu);
  if (!d.tracking) return;

  // Adjacent dirty IOPTEs are reported as one range.
  bool pending = false;
  std::uint64_t p_first = 0, p_last = 0;
  auto emit = [&](std::uint64_t a, std::uint64_t b) {
    if (pending && p_last + 1 == a) {
      p_last = b;
      return;
    }
    if (pending) cb(ctx, p_first, p_last);
    pending = true;
    p_first = a;
    p_last = b;
  };

  for (auto it = d.first_ending_at_or_after(iova); it != d.runs.end() && it->first <= last; ++it) {
    Run& r = it->second;
    const std::uint64_t key = it->first;
    const std::uint64_t lo = (std::max(iova, key) - key) >> r.shift;
    const std::uint64_t hi = (std::min(last, Impl::last_of(it)) - key) >> r.shift;
    const std::uint64_t pg_last = (1ull << r.shift) - 1;
    for (std::uint64_t w = lo / 64; w <= hi / 64; ++w) {
      std::uint64_t& word = r.dirty[static_cast<std::size_t>(w)];
      if (word == 0) continue;
      unsigned b_lo = w == lo / 64 ? static_cast<unsigned>(lo % 64) : 0;
      unsigned b_hi = w == hi / 64 ? static_cast<unsigned>(hi % 64) : 63;
      std::uint64_t bits = word & word_mask(b_lo, b_hi);
      if (bits == 0) continue;
      if (!no_clear) word &= ~bits;
      while (bits != 0) {
        unsigned b = static_cast<unsigned>(std::countr_zero(bits));
        unsigned ones = static_cast<unsigned>(std::countr_one(bits >> b));
        std::uint64_t first_idx = w * 64 + b;
        std::uint64_t last_idx = first_idx + ones - 1;
        std::uint64_t a = std::max(iova, key + (first_idx << r.shift));
        std::uint64_t z = std::min(last, key + (last_idx << r.shift) + pg_last);
        emit(a, z);
        bits &= ~(ones == 64 ? kAllOnes : ((1ull << ones) - 1) << b);
      }
    }
  }
  if (pending) cb(ctx, p_first, p_last);
}

void Domain::for_each_dirty_words(std::uint64_t iova, std::uint64_t len, bool no_clear,
                                  DirtyWordsFn fn, void* ctx) {
  if (len == 0) return;
  const std::uint64_t last = iova + (len - 1) < iova ? kAllOnes : iova + (len - 1);
  Impl& d = *impl_;
  std::unique_lock<std::shared_mutex> g(d.mu);
  if (!d.tracking) return;
  for (auto it = d.first_ending_at_or_after(iova); it != d.runs.end() && it->first <= last; ++it) {
    Run& r = it->second;
    const std::uint64_t key = it->first;
    const std::uint64_t lo = (std::max(iova, key) - key) >> r.shift;
    const std::uint64_t hi = (std::min(last, Impl::last_of(it)) - key) >> r.shift;
    fn(ctx, key, r.shift, r.dirty.data(), lo, hi);
    if (no_clear) continue;
    for (std::uint64_t w = lo / 64; w <= hi / 64; ++w) {
      unsigned b_lo = w == lo / 64 ? static_cast<unsigned>(lo % 64) : 0;
      unsigned b_hi = w == hi / 64 ? static_cast<unsigned>(hi % 64) : 63;
      std::uint64_t& word = r.dirty[static_cast<std::size_t>(w)];
      if (word) word &= ~word_mask(b_lo, b_hi);  // clean words are not written back
    }
  }
}

std::size_t Domain::take_faults(DmaFault* out, std::size_t max) noexcept {
  std::lock_guard<std::mutex> g(impl_->fault_mu);
  std::size_t n = std::min(max, impl_->faults.size());
  for (std::size_t i = 0; i < n; ++i) {
    out[i] = impl_->faults.front();
    impl_->faults.pop_front();
  }
  return n;
}

std::size_t Domain::fault_count() const noexcept {
  std::lock_guard<std::mutex> g(impl_->fault_mu);
  return impl_->faults.size();
}

std::uint64_t Domain::iopte_size(std::uint64_t iova) const noexcept {
  std::shared_lock<std::shared_mutex> g(impl_->mu);
  auto it = impl_->find(iova);
  return it == impl_->runs.end() ? 0 : 1ull << it->second.shift;
}

std::uint64_t Domain::mapped_bytes() const noexcept {
  std::shared_lock<std::shared_mutex> g(impl_->mu);
  return impl_->mapped;
}

std::uint64_t Domain::iopte_count() const noexcept {
  std::shared_lock<std::shared_mutex> g(impl_->mu);
  return impl_->ioptes;
}

std::size_t Domain::run_count() const noexcept {
  std::shared_lock<std::shared_mutex> g(impl_->mu);
  return impl_->runs.size();
}

}  // namespace fastmap::sim
