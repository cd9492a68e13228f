#include "sim/core/mmio_trap.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <vector>

#include "sim/core/user_memory.h"

namespace fastmap::sim {

namespace {

struct Mapping {
  std::uintptr_t start, end;  // page-aligned
  int prot;
  std::shared_ptr<MmioTarget> target;
  std::uint64_t region_off;  // region offset of `start`
};

std::mutex g_reg_mu;  // guards g_maps
std::vector<Mapping>* g_maps = new std::vector<Mapping>();  // never freed: handlers use it
// Held from the fault to the trap of one single-stepped instruction (and by unmap, so a
// mapping cannot go while an instruction on it is in flight).
std::mutex g_step_mu;

constexpr std::size_t kMaxPages = 2;  // an unaligned access may straddle two pages
constexpr std::size_t kMaxPageSize = 1u << 16;

struct Step {
  bool active = false;
  std::size_t npages = 0;
  std::uintptr_t page[kMaxPages]{};
  MmioTarget* target[kMaxPages]{};
  std::uint64_t off[kMaxPages]{};
  std::uint64_t fault_off = UINT64_MAX;
  sigset_t saved_mask{};
  alignas(64) std::uint8_t before[kMaxPages][kMaxPageSize];
};
thread_local Step* t_step = nullptr;

void overlap_drop_locked(std::uintptr_t lo, std::uintptr_t hi) {
  std::vector<Mapping> keep;
  for (Mapping& m : *g_maps) {
    if (m.end <= lo || m.start >= hi) {
      keep.push_back(std::move(m));
      continue;
    }
    if (m.start < lo) keep.push_back(Mapping{m.start, lo, m.prot, m.target, m.region_off});
    if (m.end > hi) {
      keep.push_back(Mapping{hi, m.end, m.prot, m.target, m.region_off + (hi - m.start)});
    }
  }
  g_maps->swap(keep);
}

#if defined(__x86_64__)
constexpr greg_t kTrapFlag = 0x100;
constexpr greg_t kPageFaultWrite = 0x2;  // error code bit: the access was a write

bool handle_segv(siginfo_t* si, ucontext_t* uc) {
  if (si->si_code != SEGV_ACCERR) return false;
  const auto a = reinterpret_cast<std::uintptr_t>(si->si_addr);
  const bool write = (uc->uc_mcontext.gregs[REG_ERR] & kPageFaultWrite) != 0;
  const std::uintptr_t ps = host_page_size();
  const bool nested = t_step && t_step->active;  // second page of the same instruction
  if (!nested) g_step_mu.lock();
  MmioTarget* target = nullptr;
  std::uint64_t off = 0;
  int prot = 0;
  {
    std::lock_guard<std::mutex> g(g_reg_mu);
    for (const Mapping& m : *g_maps) {
      if (a >= m.start && a < m.end) {
        target = m.target.get();
        off = m.region_off + ((a & ~(ps - 1)) - m.start);
        prot = m.prot;
        break;
      }
    }
  }
  const bool allowed = target && (write ? (prot & PROT_WRITE) : (prot & PROT_READ)) &&
                       !(nested && t_step->npages == kMaxPages);
  if (!allowed) {
    if (!nested) g_step_mu.unlock();
    return false;  // not ours, or not allowed by the mapping: a real SIGSEGV
  }
  if (!t_step) {
    t_step = new (std::nothrow) Step();
    if (!t_step) {
      g_step_mu.unlock();
      return false;
    }
  }
  Step& s = *t_step;
  const std::uintptr_t page = a & ~(ps - 1);
  auto* p = reinterpret_cast<std::uint8_t*>(page);
  ::mprotect(p, ps, PROT_READ | PROT_WRITE);
  if (!target->fill(off, p, ps)) {
    ::mprotect(p, ps, PROT_NONE);
    if (!nested) g_step_mu.unlock();
    // vfio-pci's fault handler answers VM_FAULT_SIGBUS with memory decoding off.
    ::syscall(SYS_tgkill, ::getpid(), ::gettid(), SIGBUS);
    return true;
  }
  const std::size_t i = nested ? s.npages : 0;
  std::memcpy(s.before[i], p, ps);
  s.page[i] = page;
  s.target[i] = target;
  s.off[i] = off;
  s.npages = i + 1;
  if (!nested) {
    s.fault_off = write ? off + (a - page) : UINT64_MAX;
    s.active = true;
    // One instruction, then SIGTRAP; no async signal handler may run in between.
    s.saved_mask = uc->uc_sigmask;
    sigfillset(&uc->uc_sigmask);
    for (int sig : {SIGTRAP, SIGSEGV, SIGBUS, SIGILL, SIGFPE}) sigdelset(&uc->uc_sigmask, sig);
    uc->uc_mcontext.gregs[REG_EFL] |= kTrapFlag;
  }
  return true;
}

bool handle_trap(ucontext_t* uc) {
  Step* s = t_step;
  if (!s || !s->active) return false;
  const std::uintptr_t ps = host_page_size();
  for (std::size_t i = 0; i < s->npages; ++i) {
    auto* p = reinterpret_cast<std::uint8_t*>(s->page[i]);
    s->target[i]->store(s->off[i], s->before[i], p, ps, i == 0 ? s->fault_off : UINT64_MAX);
    ::mprotect(p, ps, PROT_NONE);
  }
  s->npages = 0;
  s->active = false;
  uc->uc_mcontext.gregs[REG_EFL] &= ~kTrapFlag;
  uc->uc_sigmask = s->saved_mask;
  g_step_mu.unlock();
  return true;
}
#endif

}  // namespace

bool mmio_trap_supported() noexcept {
#if defined(__x86_64__)
  return host_page_size() <= kMaxPageSize;
#else
  return false;
#endif
}

long mmio_map(void* addr, std::size_t length, int prot, int flags,
              std::shared_ptr<MmioTarget> target, std::uint64_t region_off) noexcept {
  if (!mmio_trap_supported()) return -ENODEV;
  const std::size_t ps = host_page_size();
  if (length == 0) return -EINVAL;
  length = (length + ps - 1) & ~(ps - 1);
  install_fault_handlers();
  const int fixed = flags & (MAP_FIXED | MAP_FIXED_NOREPLACE);
  std::lock_guard<std::mutex> step(g_step_mu);
  void* m = ::mmap(addr, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | fixed,
                   -1, 0);
  if (m == MAP_FAILED) return -errno;
  const auto lo = reinterpret_cast<std::uintptr_t>(m);
  try {
    std::lock_guard<std::mutex> g(g_reg_mu);
    overlap_drop_locked(lo, lo + length);
    g_maps->push_back(Mapping{lo, lo + length, prot, std::move(target), region_off});
  } catch (const std::bad_alloc&) {
    ::munmap(m, length);
    return -ENOMEM;
  }
  return static_cast<long>(lo);
}

int mmio_unmap(void* addr, std::size_t length) noexcept {
  const std::size_t ps = host_page_size();
  const auto lo = reinterpret_cast<std::uintptr_t>(addr);
  if ((lo & (ps - 1)) || length == 0) return -EINVAL;
  const std::uintptr_t hi = lo + ((length + ps - 1) & ~(ps - 1));
  std::lock_guard<std::mutex> step(g_step_mu);
  try {
    std::lock_guard<std::mutex> g(g_reg_mu);
    overlap_drop_locked(lo, hi);
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
  return ::munmap(addr, length) == 0 ? 0 : -errno;
}

bool mmio_mapped(const void* addr, std::size_t length) noexcept {
  const auto lo = reinterpret_cast<std::uintptr_t>(addr);
  const std::uintptr_t hi = lo + length;
  std::lock_guard<std::mutex> g(g_reg_mu);
  for (const Mapping& m : *g_maps) {
    if (m.start < hi && lo < m.end) return true;
  }
  return false;
}

bool mmio_trap_handle(int sig, void* info, void* context) noexcept {
#if defined(__x86_64__)
  auto* uc = static_cast<ucontext_t*>(context);
  if (sig == SIGSEGV) return handle_segv(static_cast<siginfo_t*>(info), uc);
  if (sig == SIGTRAP) return handle_trap(uc);
#else
  (void)sig;
  (void)info;
  (void)context;
#endif
  return false;
}

}  // namespace fastmap::sim
