#include "sim/core/kernel_pin.h"

#include <linux/io_uring.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <shared_mutex>

#include "sim/core/shadow_arena.h"
#include "sim/core/user_memory.h"

namespace fastmap::sim {

namespace {

constexpr std::uint32_t kSlots = 1u << 14;     // IORING_MAX_REG_BUFFERS
constexpr std::uint64_t kSlotBytes = 1ull << 30;  // the largest fixed buffer (SZ_1G)
constexpr std::size_t kStage = 1u << 20;       // bytes moved per ring operation
constexpr std::size_t kClearRun = 64;          // slots unregistered per call in a batch

long uring_setup(unsigned entries, io_uring_params* p) {
  return ::syscall(__NR_io_uring_setup, entries, p);
}
long uring_enter(int fd, unsigned submit, unsigned wait, unsigned flags) {
  return ::syscall(__NR_io_uring_enter, fd, submit, wait, flags, nullptr, 0);
}
long uring_register(int fd, unsigned op, const void* arg, unsigned nr) {
  return ::syscall(__NR_io_uring_register, fd, op, arg, nr);
}

// What a ring's users share across fork(): the ring memory and the staging file are
// MAP_SHARED, so a forked child reaching its parent's pins uses them too, one process at a
// time. A robust mutex: a process killed mid-operation does not wedge the others.
struct Shared {
  pthread_mutex_t mu;
  std::uint64_t seq;  // user_data of the last operation submitted
};

// One process's ring and staging buffer: it registers and unregisters buffers there
// (guarded by ring_mu, in that process); any process descended from it moves bytes through
// it (guarded by shared->mu).
struct Ring {
  pid_t owner = 0;  // the process that set it up and registers in it
  int fd = -1;
  Shared* shared = nullptr;
  void* sq_map = nullptr;
  std::size_t sq_len = 0;
  void* cq_map = nullptr;
  std::size_t cq_len = 0;
  io_uring_sqe* sqes = nullptr;
  std::size_t sqes_len = 0;
  unsigned *sq_tail = nullptr, *sq_mask = nullptr, *sq_array = nullptr;
  unsigned *cq_head = nullptr, *cq_tail = nullptr, *cq_mask = nullptr;
  io_uring_cqe* cqes = nullptr;
  int stage_fd = -1;
  char* stage = nullptr;
  std::vector<std::uint32_t> free_slots;

  bool setup() {
    void* sh = ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) return false;
    shared = static_cast<Shared*>(sh);
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    const int rc = pthread_mutex_init(&shared->mu, &a);
    pthread_mutexattr_destroy(&a);
    if (rc != 0) return false;
    io_uring_params p{};
    const long rfd = uring_setup(4, &p);
    if (rfd < 0) return false;
    fd = static_cast<int>(rfd);
    if (!(p.features & IORING_FEAT_SINGLE_MMAP)) return false;
    sq_len = std::max<std::size_t>(p.sq_off.array + p.sq_entries * sizeof(unsigned),
                                   p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe));
    sq_map = ::mmap(nullptr, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                    IORING_OFF_SQ_RING);
    if (sq_map == MAP_FAILED) {
      sq_map = nullptr;
      return false;
    }
    cq_map = sq_map;
    cq_len = sq_len;
    sqes_len = p.sq_entries;
    void* s = ::mmap(nullptr, sqes_len * sizeof(io_uring_sqe), PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
    if (s == MAP_FAILED) return false;
    sqes = static_cast<io_uring_sqe*>(s);
    auto* sq = static_cast<char*>(sq_map);
    sq_tail = reinterpret_cast<unsigned*>(sq + p.sq_off.tail);
    sq_mask = reinterpret_cast<unsigned*>(sq + p.sq_off.ring_mask);
    sq_array = reinterpret_cast<unsigned*>(sq + p.sq_off.array);
    cq_head = reinterpret_cast<unsigned*>(sq + p.cq_off.head);
    cq_tail = reinterpret_cast<unsigned*>(sq + p.cq_off.tail);
    cq_mask = reinterpret_cast<unsigned*>(sq + p.cq_off.ring_mask);
    cqes = reinterpret_cast<io_uring_cqe*>(sq + p.cq_off.cqes);
    const long sfd = ::syscall(__NR_memfd_create, "fastmap-sim-dma", MFD_CLOEXEC);
    if (sfd < 0) return false;
    stage_fd = static_cast<int>(sfd);
    if (::ftruncate(stage_fd, kStage) != 0) return false;
    void* st = ::mmap(nullptr, kStage, PROT_READ | PROT_WRITE, MAP_SHARED, stage_fd, 0);
    if (st == MAP_FAILED) return false;
    stage = static_cast<char*>(st);
    return true;
  }

  // One fixed-buffer read or write of the staging file, waited for: 0 or -EFAULT.
  // shared->mu held.
  int run(unsigned char opcode, std::uint64_t va, std::uint32_t len, std::uint32_t slot) {
    const std::uint64_t tag = ++shared->seq;
    const unsigned tail = *sq_tail;
    const unsigned idx = tail & *sq_mask;
    io_uring_sqe& e = sqes[idx];
    std::memset(&e, 0, sizeof e);
    e.opcode = opcode;
    e.fd = stage_fd;
    e.off = 0;
    e.addr = va;
    e.len = len;
    e.buf_index = static_cast<std::uint16_t>(slot);
    e.user_data = tag;
    sq_array[idx] = idx;
    __atomic_store_n(sq_tail, tail + 1, __ATOMIC_RELEASE);
    long rc;
    do {
      rc = uring_enter(fd, 1, 0, 0);
    } while (rc < 0 && (errno == EINTR || errno == EAGAIN));
    if (rc != 1) return -EFAULT;
    // Completions left by a process killed mid-operation come first: skip them.
    for (;;) {
      const unsigned head = *cq_head;
      while (__atomic_load_n(cq_tail, __ATOMIC_ACQUIRE) == head) {
        rc = uring_enter(fd, 0, 1, IORING_ENTER_GETEVENTS);
        if (rc < 0 && errno != EINTR && errno != EAGAIN) return -EFAULT;
      }
      const io_uring_cqe c = cqes[head & *cq_mask];
      __atomic_store_n(cq_head, head + 1, __ATOMIC_RELEASE);
      if (c.user_data == tag) return c.res == static_cast<int>(len) ? 0 : -EFAULT;
    }
  }

  // Unregister slots [first, first + n) (n <= kClearRun) in one call: 0 or -1.
  int clear(std::uint32_t first, unsigned n) {
    struct iovec iov[kClearRun] = {};
    io_uring_rsrc_update2 up{};
    up.offset = first;
    up.data = reinterpret_cast<std::uint64_t>(iov);
    up.nr = n;
    const long rc = uring_register(fd, IORING_REGISTER_BUFFERS_UPDATE, &up, sizeof up);
    return rc == static_cast<long>(n) ? 0 : -1;
  }

  int update(std::uint32_t slot, std::uint64_t va, std::uint64_t len) {
    struct iovec iov{reinterpret_cast<void*>(va), len};
    io_uring_rsrc_update2 up{};
    up.offset = slot;
    up.data = reinterpret_cast<std::uint64_t>(&iov);
    up.nr = 1;
    return uring_register(fd, IORING_REGISTER_BUFFERS_UPDATE, &up, sizeof up) == 1 ? 0 : -1;
  }
};

std::mutex ring_mu;  // this process's own ring: its setup, slots and registrations
Ring* g_own = nullptr;
// Set by fork() (prepare handler): slots freed afterwards may still be reached by a child
// through its copy of the simulator, so they are cleared but never handed out again.
std::atomic<bool> g_forked{false};
// This process's id, cached (getpid() is a system call, and every pin and unpin asks):
// 0 until the first pin, refreshed in a forked child by the atfork handler set up with it.
std::atomic<pid_t> g_pid{0};

pid_t my_pid() {
  pid_t p = g_pid.load(std::memory_order_relaxed);
  if (p == 0) {
    p = ::getpid();
    g_pid.store(p, std::memory_order_relaxed);
  }
  return p;
}

// This process's own ring, set up on first use (a forked child sets up its own: the
// parent's stays the parent's, reached only for pins made before the fork). ring_mu held.
// Null if the host has no usable io_uring.
Ring* own_ring() {
  static std::once_flag atfork;
  std::call_once(atfork, [] {
    ::pthread_atfork([] { g_forked.store(true, std::memory_order_relaxed); }, nullptr,
                     [] { g_pid.store(::getpid(), std::memory_order_relaxed); });
  });
  const pid_t me = my_pid();
  if (g_own && g_own->owner == me) return g_own->fd >= 0 ? g_own : nullptr;
  // The parent's Ring stays allocated: this process's pins made before the fork use it.
  Ring* r = new (std::nothrow) Ring();
  if (!r) return nullptr;
  r->owner = me;
  bool ok = r->setup();
  if (ok) {
    io_uring_rsrc_register reg{};
    reg.nr = kSlots;
    reg.flags = IORING_RSRC_REGISTER_SPARSE;
    ok = uring_register(r->fd, IORING_REGISTER_BUFFERS2, &reg, sizeof reg) == 0;
  }
  if (ok) {
    try {
      r->free_slots.reserve(kSlots);
      for (std::uint32_t s = kSlots; s-- > 0;) r->free_slots.push_back(s);
    } catch (const std::bad_alloc&) {
      ok = false;
    }
  }
  if (!ok && r->fd >= 0) {
    ::close(r->fd);  // unusable: later pins fall back to the VA
    r->fd = -1;
  }
  g_own = r;  // a failed setup is not retried in this process
  return ok ? r : nullptr;
}

// A shadow is congruent with the VA modulo the largest IOPTE that could fit (a power of
// two up to len, at most 1 GiB), so IOPTE sizes follow the VA's; a one-page pin needs none.
std::uint64_t shadow_align(std::uint64_t len) {
  std::uint64_t align = kSlotBytes;
  while (align > len) align >>= 1;
  return align <= host_page_size() ? 0 : align;
}

// The slots released inside this thread's outermost KernelPinBatch, and the ring they are
// in (this process's own).
thread_local std::vector<std::uint32_t>* t_batch = nullptr;
thread_local const void* t_batch_ring = nullptr;

std::atomic<long> g_alive{0};
std::shared_mutex pins_mu;
std::map<std::uint64_t, const KernelPin*>& pins() {  // by shadow start
  static auto* m = new std::map<std::uint64_t, const KernelPin*>();
  return *m;
}

}  // namespace

struct KernelPin::Impl {
  // Move [off, off+n) of the pin (n within one slot) through its ring.
  static int move(PinOp op, const KernelPin& p, std::uint64_t off, char* buf, std::size_t n) {
    if (op == PinOp::kCheck) return 0;  // pinned pages are there, and writable
    Ring& r = *static_cast<Ring*>(p.ring_);
    if (pthread_mutex_lock(&r.shared->mu) == EOWNERDEAD) pthread_mutex_consistent(&r.shared->mu);
    const std::uint32_t slot = p.slots_[off / kSlotBytes];
    int rc = 0;
    while (n > 0 && rc == 0) {
      const std::size_t chunk = std::min(n, kStage);
      const std::uint64_t va = p.va_ + off;
      if (op == PinOp::kRead) {
        rc = r.run(IORING_OP_WRITE_FIXED, va, static_cast<std::uint32_t>(chunk), slot);
        if (rc == 0) std::memcpy(buf, r.stage, chunk);
      } else {
        if (op == PinOp::kWrite) {
          std::memcpy(r.stage, buf, chunk);
        } else {
          std::memset(r.stage, 0, chunk);
        }
        rc = r.run(IORING_OP_READ_FIXED, va, static_cast<std::uint32_t>(chunk), slot);
      }
      off += chunk;
      if (buf) buf += chunk;
      n -= chunk;
    }
    pthread_mutex_unlock(&r.shared->mu);
    return rc;
  }
};

std::shared_ptr<const KernelPin> KernelPin::pin(std::uint64_t va, std::uint64_t len) noexcept {
  if (len == 0 || current_remote_mm() != 0) return nullptr;  // another process's pages
  std::shared_ptr<KernelPin> p;
  try {
    p.reset(new KernelPin());
    p->slots_.reserve(static_cast<std::size_t>((len + kSlotBytes - 1) / kSlotBytes));
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
  p->va_ = va;
  p->len_ = len;
  {
    std::lock_guard<std::mutex> g(ring_mu);
    Ring* r = own_ring();
    if (!r) return nullptr;
    p->ring_ = r;
    p->owner_ = r->owner;
    for (std::uint64_t off = 0; off < len; off += kSlotBytes) {
      if (r->free_slots.empty()) return nullptr;  // the destructor gives back what was taken
      const std::uint32_t s = r->free_slots.back();
      if (r->update(s, va + off, std::min(kSlotBytes, len - off)) != 0) return nullptr;
      r->free_slots.pop_back();
      p->slots_.push_back(s);  // reserved above: no allocation
    }
  }
  const std::uint64_t start = shadow_alloc(va, len, shadow_align(len));
  if (!start) return nullptr;
  p->shadow_ = start;
  try {
    std::unique_lock<std::shared_mutex> g(pins_mu);
    pins().emplace(start, p.get());
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
  g_alive.fetch_add(1, std::memory_order_relaxed);
  return p;
}

KernelPin::~KernelPin() {
  if (shadow_) {
    {
      std::unique_lock<std::shared_mutex> g(pins_mu);
      if (pins().erase(shadow_)) g_alive.fetch_sub(1, std::memory_order_relaxed);
    }
    shadow_free(shadow_, len_, shadow_align(len_));
  }
  // A pin inherited from the parent is the parent's to release.
  if (slots_.empty() || owner_ != my_pid()) return;
  if (t_batch && t_batch_ring == ring_) {
    try {
      t_batch->insert(t_batch->end(), slots_.begin(), slots_.end());
      return;  // released when the batch ends
    } catch (const std::bad_alloc&) {
      // No room to defer: released now, below.
    }
  }
  std::lock_guard<std::mutex> g(ring_mu);
  Ring& r = *static_cast<Ring*>(ring_);
  const bool reuse = !g_forked.load(std::memory_order_relaxed);
  for (std::uint32_t s : slots_) {
    r.update(s, 0, 0);  // the host drops its pin once no request uses the buffer
    if (reuse) r.free_slots.push_back(s);  // capacity kSlots, reserved: no allocation
  }
}

KernelPinBatch::KernelPinBatch() noexcept {
  if (t_batch) return;  // nested: the outermost batch releases
  std::lock_guard<std::mutex> g(ring_mu);
  if (!g_own || g_own->owner != my_pid() || g_own->fd < 0) return;  // no pins of ours
  t_batch = &slots_;
  t_batch_ring = ring_ = g_own;
  outer_ = true;
}

KernelPinBatch::~KernelPinBatch() {
  if (!outer_) return;
  t_batch = nullptr;
  t_batch_ring = nullptr;
  if (slots_.empty()) return;
  std::sort(slots_.begin(), slots_.end());
  std::lock_guard<std::mutex> g(ring_mu);
  Ring& r = *static_cast<Ring*>(ring_);
  const bool reuse = !g_forked.load(std::memory_order_relaxed);
  for (std::size_t i = 0; i < slots_.size();) {
    // One update for each run of consecutive slots (at most kClearRun at a time).
    std::size_t n = 1;
    while (i + n < slots_.size() && n < kClearRun && slots_[i + n] == slots_[i] + n) ++n;
    if (r.clear(slots_[i], static_cast<unsigned>(n)) != 0) {
      for (std::size_t j = i; j < i + n; ++j) r.update(slots_[j], 0, 0);
    }
    if (reuse) {
      for (std::size_t j = i; j < i + n; ++j) r.free_slots.push_back(slots_[j]);
    }
    i += n;
  }
}

bool kernel_pins_alive() noexcept { return g_alive.load(std::memory_order_relaxed) != 0; }

int kernel_pin_access(PinOp op, std::uint64_t addr, char* buf, std::size_t len,
                      bool write_check, PlainAccess plain) noexcept {
  while (len > 0) {
    const KernelPin* hit = nullptr;
    std::uint64_t span = len;  // bytes from addr handled the same way
    {
      std::shared_lock<std::shared_mutex> g(pins_mu);
      auto next = pins().upper_bound(addr);
      if (next != pins().begin()) {
        const KernelPin* p = std::prev(next)->second;
        if (addr < p->shadow() + p->len()) {
          hit = p;
          span = std::min<std::uint64_t>(span, p->shadow() + p->len() - addr);
        }
      }
      if (!hit && next != pins().end()) span = std::min<std::uint64_t>(span, next->first - addr);
      if (hit) {
        // Within one slot per move; the pin stays alive meanwhile, as the domain or the
        // caller that reached this address holds it.
        const std::uint64_t off = addr - hit->shadow();
        span = std::min<std::uint64_t>(span, kSlotBytes - (off & (kSlotBytes - 1)));
      }
    }
    const auto n = static_cast<std::size_t>(span);
    const int rc = hit ? KernelPin::Impl::move(op, *hit, addr - hit->shadow(), buf, n)
                       : plain(op, addr, buf, n, write_check);
    if (rc) return rc;
    addr += n;
    if (buf) buf += n;
    len -= n;
  }
  return 0;
}

std::uint64_t kernel_pin_origin(std::uint64_t addr) noexcept {
  if (!kernel_pins_alive()) return addr;
  std::shared_lock<std::shared_mutex> g(pins_mu);
  auto next = pins().upper_bound(addr);
  if (next == pins().begin()) return addr;
  const KernelPin* p = std::prev(next)->second;
  return addr < p->shadow() + p->len() ? p->va() + (addr - p->shadow()) : addr;
}

}  // namespace fastmap::sim
