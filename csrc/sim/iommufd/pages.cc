#include "sim/iommufd/pages.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <mutex>

#include "sim/core/fail_nth.h"
#include "sim/core/kernel_core.h"
#include "sim/core/user_memory.h"

namespace fastmap::sim {

namespace {

// Every simulated kernel's pinned pages, as runs of VAs with the same pin count:
// (kernel, run start) -> (run end, pins), pins never 0. Runs, not pages: pinning a 1 GiB
// area is one entry, not 262144.
struct PinRun {
  std::uint64_t end;  // exclusive
  unsigned pins;
};
using RunKey = std::pair<const KernelCore*, std::uint64_t>;
struct PinRegistry {
  std::mutex mu;
  std::map<RunKey, PinRun> runs;
};

PinRegistry& registry() {
  static PinRegistry* r = new PinRegistry();  // outlives every kernel; never destroyed
  return *r;
}

// Splits the run holding `va` (if any) so that a run starts at `va`. r.mu held.
void split_at(PinRegistry& r, const KernelCore* k, std::uint64_t va) {
  auto it = r.runs.upper_bound({k, va});
  if (it == r.runs.begin()) return;
  --it;
  if (it->first.first != k || it->first.second == va || it->second.end <= va) return;
  const PinRun tail{it->second.end, it->second.pins};
  it->second.end = va;
  r.runs.emplace_hint(std::next(it), RunKey{k, va}, tail);
}

// Adds `delta` pins to every page of [va, va + len), dropping runs that reach 0.
void add_page_pins(const KernelCore& kernel, std::uint64_t va, std::uint64_t len, int delta) {
  PinRegistry& r = registry();
  const KernelCore* k = &kernel;
  const std::uint64_t end = va + len;
  std::lock_guard<std::mutex> g(r.mu);
  split_at(r, k, va);
  split_at(r, k, end);
  std::uint64_t cur = va;
  auto it = r.runs.lower_bound({k, va});
  while (cur < end) {
    if (it == r.runs.end() || it->first.first != k || it->first.second > cur) {
      // A gap: pages nobody pins (only reachable when pinning).
      const std::uint64_t gap_end =
          (it == r.runs.end() || it->first.first != k) ? end : std::min(end, it->first.second);
      if (delta > 0) {
        r.runs.emplace_hint(it, RunKey{k, cur}, PinRun{gap_end, static_cast<unsigned>(delta)});
      }
      cur = gap_end;
      continue;
    }
    it->second.pins += static_cast<unsigned>(delta);
    cur = it->second.end;
    it = it->second.pins == 0 ? r.runs.erase(it) : std::next(it);
  }
}

}  // namespace

unsigned page_pins(const KernelCore& kernel, std::uint64_t va) {
  PinRegistry& r = registry();
  std::lock_guard<std::mutex> g(r.mu);
  auto it = r.runs.upper_bound({&kernel, va});
  if (it == r.runs.begin()) return 0;
  --it;
  return it->first.first == &kernel && va < it->second.end ? it->second.pins : 0;
}

std::shared_ptr<IoptPages> IoptPages::user(std::uint64_t uptr, std::uint64_t length,
                                           bool writable, AccountMode mode) {
  const std::uint64_t ps = host_page_size();
  std::shared_ptr<IoptPages> p(new IoptPages());
  p->account_mode = mode;
  p->writable_ = writable;
  p->base_ = uptr & ~(ps - 1);
  p->first_byte_ = uptr - p->base_;
  p->npages_ = (p->first_byte_ + length + ps - 1) / ps;
  p->va_base_ = p->base_;
  p->mm_ = current_remote_mm();
  return p;
}

int IoptPages::file(int fd, std::uint64_t start, std::uint64_t length, bool writable,
                    AccountMode mode, std::shared_ptr<IoptPages>* out) {
  struct stat st;
  if (fd < 0 || ::fstat(fd, &st) != 0) return -EBADF;
  int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0) return -EBADF;
  // Like iopt_alloc_file_pages: a writable mapping needs a file opened for writing.
  if (writable && (fl & O_ACCMODE) == O_RDONLY) return -EPERM;
  // Hold our own reference to the file, as get_file() does: the caller may close its fd.
  int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) return -EMFILE;
  const std::uint64_t ps = host_page_size();
  std::shared_ptr<IoptPages> p(new IoptPages());
  p->account_mode = mode;
  p->writable_ = writable;
  p->is_file_ = true;
  p->fd_ = dup;
  p->base_ = start & ~(ps - 1);
  p->first_byte_ = start - p->base_;
  p->npages_ = (p->first_byte_ + length + ps - 1) / ps;
  *out = std::move(p);
  return 0;
}

IoptPages::~IoptPages() {
  if (map_) ::munmap(map_, npages_ * host_page_size());
  if (fd_ >= 0) ::close(fd_);
}

int IoptPages::check_pages(std::uint64_t first, std::uint64_t last) {
  const std::uint64_t ps = host_page_size();
  if (is_file_) {
    // Pages past EOF cannot be pinned (and touching them through the mapping would raise
    // SIGBUS), so they fail like GUP does.
    struct stat st;
    if (::fstat(fd_, &st) != 0) return -EFAULT;
    if (static_cast<std::uint64_t>(st.st_size) <= base_ + last * ps) return -EFAULT;
    if (!map_) {
      int prot = PROT_READ | (writable_ ? PROT_WRITE : 0);
      void* m = ::mmap(nullptr, npages_ * ps, prot, MAP_SHARED, fd_,
                       static_cast<off_t>(base_));
      if (m == MAP_FAILED) return -EFAULT;
      map_ = m;
      va_base_ = reinterpret_cast<std::uint64_t>(m);
    }
    return 0;
  }
  // Unheld pages are looked up in the mm that mapped them (a forked child's may be gone:
  // then GUP fails with EFAULT); held pages through the simulator's own hold.
  RemoteMmScope mm(pins_.empty() ? mm_ : 0);
  return check_user_pages(va_base_ + first * ps, (last - first + 1) * ps, writable_);
}

std::uint64_t IoptPages::pinned_pages_with(std::pair<std::uint64_t, std::uint64_t> extra) const {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> v(pins_);
  if (extra.first <= extra.second) v.push_back(extra);
  std::sort(v.begin(), v.end());
  std::uint64_t total = 0, cur_first = 0, cur_last = 0;
  bool open = false;
  for (const auto& [f, l] : v) {
    if (open && f <= cur_last + 1) {
      cur_last = std::max(cur_last, l);
      continue;
    }
    if (open) total += cur_last - cur_first + 1;
    cur_first = f;
    cur_last = l;
    open = true;
  }
  if (open) total += cur_last - cur_first + 1;
  return total;
}

int IoptPages::charge(KernelCore& kernel, std::uint64_t npages) {
  if (npages == 0 || account_mode == AccountMode::kNone) return 0;
  // incr_locked_vm / io_uring-style: an atomic compare against RLIMIT_MEMLOCK.
  const std::uint64_t limit = kernel.config().rlimit_memlock / host_page_size();
  auto& counter = kernel.locked_vm(account_mode == AccountMode::kMm);
  std::uint64_t cur = counter.load();
  do {
    if (cur + npages > limit) return -ENOMEM;
  } while (!counter.compare_exchange_weak(cur, cur + npages));
  charged_ += npages;
  return 0;
}

void IoptPages::uncharge(KernelCore& kernel, std::uint64_t npages) {
  if (npages == 0 || account_mode == AccountMode::kNone) return;
  kernel.locked_vm(account_mode == AccountMode::kMm).fetch_sub(npages);
  charged_ -= npages;
}

int IoptPages::pin(KernelCore& kernel, std::uint64_t first, std::uint64_t last) {
  if (should_fail()) return -ENOMEM;  // the page-list allocation of pin_user_pages
  if (int rc = check_pages(first, last)) return rc;
  const std::uint64_t before = pinned_pages_with({1, 0});
  const std::uint64_t after = pinned_pages_with({first, last});
  if (int rc = charge(kernel, after - before)) return rc;
  count_pins(kernel, first, last, 1);
  pins_.emplace_back(first, last);
  if (!is_file_ && pins_.size() == 1) {
    // The first pin takes hold of the pages now at the VA; later pins share them.
    hold_ = PageHold(base_, npages_ * host_page_size());
    va_base_ = hold_.addr();
  }
  return 0;
}

void IoptPages::count_pins(KernelCore& kernel, std::uint64_t first, std::uint64_t last,
                           int delta) {
  if (is_file_) return;  // MD_CHECK_REFS looks at user VAs only
  // The pages whose pinned state flips are those of [first, last] that no other pin (pins_,
  // which excludes this one here) covers: report each uncovered run in one call.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> others(pins_);
  std::sort(others.begin(), others.end());
  const std::uint64_t ps = host_page_size();
  std::uint64_t cur = first;  // the first page not yet looked at
  for (const auto& [f, l] : others) {
    if (cur > last) break;
    if (l < cur) continue;
    if (f > last) break;
    if (f > cur) add_page_pins(kernel, base_ + cur * ps, (f - cur) * ps, delta);
    cur = std::max(cur, l + 1);
  }
  if (cur <= last) add_page_pins(kernel, base_ + cur * ps, (last - cur + 1) * ps, delta);
}

void IoptPages::unpin(KernelCore& kernel, std::uint64_t first, std::uint64_t last) {
  auto it = std::find(pins_.begin(), pins_.end(), std::make_pair(first, last));
  if (it == pins_.end()) return;
  const std::uint64_t before = pinned_pages_with({1, 0});
  pins_.erase(it);
  uncharge(kernel, before - pinned_pages_with({1, 0}));
  count_pins(kernel, first, last, -1);
  if (!is_file_ && pins_.empty()) {
    hold_ = PageHold();  // the last unpin lets go of the pages; a new pin takes the VA's
    va_base_ = base_;
  }
}

void IoptPages::split_pin(std::uint64_t first, std::uint64_t last, std::uint64_t lhs_last,
                          std::uint64_t rhs_first) {
  auto it = std::find(pins_.begin(), pins_.end(), std::make_pair(first, last));
  if (it == pins_.end()) return;
  it->second = lhs_last;
  pins_.emplace_back(rhs_first, last);
}

}  // namespace fastmap::sim
