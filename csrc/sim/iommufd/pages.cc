#include "sim/iommufd/pages.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <mutex>

#include "sim/core/kernel_core.h"
#include "sim/core/user_memory.h"

namespace fastmap::sim {

namespace {

// Every simulated kernel's pinned pages: (kernel, page VA) -> pins, never 0.
struct PinRegistry {
  std::mutex mu;
  std::map<std::pair<const KernelCore*, std::uint64_t>, unsigned> pins;
};

PinRegistry& registry() {
  static PinRegistry* r = new PinRegistry();  // outlives every kernel; never destroyed
  return *r;
}

void add_page_pins(const KernelCore& kernel, std::uint64_t va, std::uint64_t npages,
                   int delta) {
  const std::uint64_t ps = host_page_size();
  PinRegistry& r = registry();
  std::lock_guard<std::mutex> g(r.mu);
  for (std::uint64_t i = 0; i < npages; ++i, va += ps) {
    unsigned& n = r.pins[{&kernel, va}];
    n += static_cast<unsigned>(delta);
    if (n == 0) r.pins.erase({&kernel, va});
  }
}

}  // namespace

unsigned page_pins(const KernelCore& kernel, std::uint64_t va) {
  PinRegistry& r = registry();
  std::lock_guard<std::mutex> g(r.mu);
  auto it = r.pins.find({&kernel, va});
  return it == r.pins.end() ? 0 : it->second;
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
  if (int rc = check_pages(first, last)) return rc;
  const std::uint64_t before = pinned_pages_with({1, 0});
  const std::uint64_t after = pinned_pages_with({first, last});
  if (int rc = charge(kernel, after - before)) return rc;
  pins_.emplace_back(first, last);
  if (!is_file_ && pins_.size() == 1) {
    // The first pin takes hold of the pages now at the VA; later pins share them.
    hold_ = PageHold(base_, npages_ * host_page_size());
    va_base_ = hold_.addr();
  }
  count_pins(kernel, first, last, 1);
  return 0;
}

void IoptPages::count_pins(KernelCore& kernel, std::uint64_t first, std::uint64_t last,
                           int delta) {
  if (is_file_) return;  // MD_CHECK_REFS looks at user VAs only
  if (page_pins_.empty()) page_pins_.assign(npages_, 0);
  const std::uint64_t ps = host_page_size();
  // Report runs of pages whose pinned state flips, in one call each.
  std::uint64_t run = 0, run_first = 0;
  auto flush = [&] {
    if (run) add_page_pins(kernel, base_ + run_first * ps, run, delta);
    run = 0;
  };
  for (std::uint64_t i = first; i <= last; ++i) {
    std::uint32_t& n = page_pins_[i];
    const bool flips = delta > 0 ? n++ == 0 : --n == 0;
    if (flips) {
      if (!run) run_first = i;
      ++run;
    } else {
      flush();
    }
  }
  flush();
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
