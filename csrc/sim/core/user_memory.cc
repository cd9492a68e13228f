#include "sim/core/user_memory.h"

#include <setjmp.h>
#include <signal.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "sim/core/fail_nth.h"
#include "sim/core/kernel_pin.h"
#include "sim/core/mmio_trap.h"

namespace fastmap::sim {

namespace {

// Armed while this thread runs a user copy; the handler jumps back through it.
thread_local sigjmp_buf* t_fixup = nullptr;
thread_local pid_t t_remote = 0;  // RemoteMmScope's process

// One remote copy: 0, or -EFAULT when any byte could not be moved.
int remote_rw(pid_t pid, void* local, std::uint64_t remote, std::size_t len, bool write) {
  while (len > 0) {
    struct iovec l{local, len};
    struct iovec r{reinterpret_cast<void*>(remote), len};
    const ssize_t n = write ? ::process_vm_writev(pid, &l, 1, &r, 1, 0)
                            : ::process_vm_readv(pid, &l, 1, &r, 1, 0);
    if (n <= 0) return -EFAULT;
    local = static_cast<char*>(local) + n;
    remote += static_cast<std::uint64_t>(n);
    len -= static_cast<std::size_t>(n);
  }
  return 0;
}
struct sigaction g_prev_segv;
struct sigaction g_prev_bus;
struct sigaction g_prev_trap;

void on_fault(int sig, siginfo_t* info, void* context) {
  if (sig != SIGTRAP) {
    if (sigjmp_buf* jb = t_fixup) {
      t_fixup = nullptr;
      siglongjmp(*jb, 1);
    }
  }
  // A load or store on a simulated MMIO mapping, or the single-step trap after one.
  if (sig != SIGBUS && mmio_trap_handle(sig, info, context)) return;
  // Not ours: hand it to whoever was there before (Python's faulthandler, a debugger's
  // handler, or the default action, which then kills the process as it would have).
  const struct sigaction& prev =
      sig == SIGSEGV ? g_prev_segv : sig == SIGBUS ? g_prev_bus : g_prev_trap;
  if ((prev.sa_flags & SA_SIGINFO) && prev.sa_sigaction) {
    prev.sa_sigaction(sig, info, context);
    return;
  }
  if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN) {
    prev.sa_handler(sig);
    return;
  }
  struct sigaction dfl{};
  dfl.sa_handler = SIG_DFL;
  sigaction(sig, &dfl, nullptr);  // the faulting instruction reruns and takes the default
  if (sig == SIGTRAP) ::raise(SIGTRAP);  // a trap does not rerun: deliver it again
}

std::mutex g_install_mu;

// Installs on_fault for `sig` unless it is already there; the handler found is kept to be
// chained to.
void install_one(int sig, struct sigaction* prev) {
  struct sigaction cur{};
  sigaction(sig, nullptr, &cur);
  if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_fault) return;
  struct sigaction sa{};
  sa.sa_sigaction = on_fault;
  // SA_NODEFER: the signal is not blocked while handling, so jumping out of the handler
  // needs no signal-mask restore (and sigsetjmp no sigprocmask call on the fast path).
  // SIGSEGV/SIGBUS run on the alternate stack if there is one (a stack overflow must still
  // reach the chained handler); the single-step trap, where a stored register may start a
  // whole DMA, runs on the thread's own stack.
  sa.sa_flags = SA_SIGINFO | SA_NODEFER | (sig == SIGTRAP ? 0 : SA_ONSTACK);
  sigemptyset(&sa.sa_mask);
  sigaction(sig, &sa, prev);
}

void install_fault_handler() {
  static std::once_flag once;
  std::call_once(once, [] { install_fault_handlers(); });
}

bool range_wraps(std::uint64_t a, std::size_t len) { return len && a + len - 1 < a; }

// Runs f() with faults turned into -EFAULT. f must not allocate, lock or otherwise leave
// state behind that a jump out of the middle would break.
template <class F>
int with_fixup(F&& f) noexcept {
  install_fault_handler();
  sigjmp_buf jb;
  if (sigsetjmp(jb, 0) != 0) return -EFAULT;
  t_fixup = &jb;
  // The accesses must happen between arming and disarming: keep the compiler from moving
  // them across (it cannot see that they may fault).
  asm volatile("" ::: "memory");
  f();
  asm volatile("" ::: "memory");
  t_fixup = nullptr;
  return 0;
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
// Sanitizer builds (tools/sanitize): user pointers may be wild, so the accesses that may fault
// are not instrumented (an instrumented access or an intercepted memcpy would report a wild
// address before the fault fixup could turn it into EFAULT), and byte loops replace
// memcpy/memset, which the runtimes intercept.
// maybe_unused: under TSan the copies go through process_vm_readv/writev instead.
#define FM_USER_ACCESS \
  [[maybe_unused, gnu::noinline, gnu::no_sanitize("address", "thread", "undefined")]]
FM_USER_ACCESS void copy_bytes(void* dst, const void* src, std::size_t n) {
  auto* d = static_cast<volatile unsigned char*>(dst);
  const auto* s = static_cast<const volatile unsigned char*>(src);
  for (std::size_t i = 0; i < n; ++i) d[i] = s[i];
}
FM_USER_ACCESS void zero_bytes(void* dst, std::size_t n) {
  auto* d = static_cast<volatile unsigned char*>(dst);
  for (std::size_t i = 0; i < n; ++i) d[i] = 0;
}
FM_USER_ACCESS void touch_read(const volatile unsigned char* p) { (void)*p; }
FM_USER_ACCESS void touch_write(unsigned char* p) {
  __atomic_fetch_or(p, 0, __ATOMIC_RELAXED);
}
#else
// Probes the compiler must really perform.
void touch_read(const volatile unsigned char* p) { (void)*p; }
void touch_write(unsigned char* p) { __atomic_fetch_or(p, 0, __ATOMIC_RELAXED); }

// Out of line, so no copy is folded into the caller's code outside the armed window.
[[gnu::noinline]] void copy_bytes(void* dst, const void* src, std::size_t n) {
  std::memcpy(dst, src, n);
  asm volatile("" ::: "memory");
}
[[gnu::noinline]] void zero_bytes(void* dst, std::size_t n) {
  std::memset(dst, 0, n);
  asm volatile("" ::: "memory");
}
#endif

#if defined(__SANITIZE_ADDRESS__)
extern "C" void* __asan_region_is_poisoned(void* beg, std::size_t size);
// x86-64 ASan's application memory (the rest of the lower half is its shadow and gap).
bool asan_app_address(std::uint64_t a) {
  return a < 0x7fff8000ULL || (a >= 0x10007fff8000ULL && a <= 0x7fffffffffffULL);
}
// Not instrumented: ASan would check the shadow of its own shadow.
FM_USER_ACCESS unsigned char asan_shadow_byte(std::uint64_t a) {
  return *reinterpret_cast<const volatile unsigned char*>((a >> 3) + 0x7fff8000ULL);
}
// The kernel reads and writes any mapped page, but in this process a mapped byte that ASan
// poisoned (a freed buffer, a redzone past a heap block) means the caller handed the
// "kernel" a buffer shorter or older than it claimed: make ASan report it, with the stack,
// by touching that byte through instrumented code. Mapped, so this does not fault.
// Only the bytes the copy will reach are checked: it stops at the first page it cannot
// access, and what lies past that page is other memory of this process, which another
// thread may be poisoning and unpoisoning right now (a stack frame, a heap block).
void asan_check_user(std::uint64_t addr, std::size_t len) {
  const std::uint64_t ps = host_page_size();
  while (len) {
    const std::size_t n = static_cast<std::size_t>(
        std::min<std::uint64_t>(len, (addr | (ps - 1)) - addr + 1));
    if (!asan_app_address(addr) || !asan_app_address(addr + n - 1)) return;
    auto* page = reinterpret_cast<unsigned char*>(addr);
    if (with_fixup([&] { touch_read(page); }) != 0) return;
    void* bad = __asan_region_is_poisoned(page, n);
    const auto b = reinterpret_cast<std::uint64_t>(bad);
    // 0xfe marks ASan's own memory: a wild pointer that happens to land there is the
    // caller's bug but not one ASan can describe, so leave it to the copy (as the kernel
    // would).
    if (bad && asan_app_address(b) && asan_shadow_byte(b) != 0xfe) {
      (void)*static_cast<volatile unsigned char*>(bad);
    }
    addr += n;
    len -= n;
  }
}
#else
void asan_check_user(std::uint64_t, std::size_t) {}
#endif


}  // namespace

void install_fault_handlers() noexcept {
  std::lock_guard<std::mutex> g(g_install_mu);
  install_one(SIGSEGV, &g_prev_segv);
  install_one(SIGBUS, &g_prev_bus);
  install_one(SIGTRAP, &g_prev_trap);
}

RemoteMmScope::RemoteMmScope(pid_t pid) noexcept : saved_(t_remote) { t_remote = pid; }
RemoteMmScope::~RemoteMmScope() { t_remote = saved_; }
pid_t current_remote_mm() noexcept { return t_remote; }
void set_thread_remote_mm(pid_t pid) noexcept { t_remote = pid; }

std::uint64_t host_page_size() noexcept {
  static const std::uint64_t ps = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  return ps;
}

namespace {

int plain_copy_from_user(void* dst, std::uint64_t user_src, std::size_t len) noexcept {
  if (t_remote) return remote_rw(t_remote, dst, user_src, len, false);
#if defined(__SANITIZE_THREAD__)
  // Under TSan a siglongjmp out of its wrapped SIGSEGV handler is not reliable: copy through
  // process_vm_readv/writev on this process, which fail with EFAULT on unmapped, PROT_NONE
  // and (for writes) read-only pages like copy_to_user, with no signal at all.
  return remote_rw(::getpid(), dst, user_src, len, false);
#else
  asan_check_user(user_src, len);
  return with_fixup([&] { copy_bytes(dst, reinterpret_cast<const void*>(user_src), len); });
#endif
}

int plain_copy_to_user(std::uint64_t user_dst, const void* src, std::size_t len) noexcept {
  if (t_remote) return remote_rw(t_remote, const_cast<void*>(src), user_dst, len, true);
#if defined(__SANITIZE_THREAD__)
  return remote_rw(::getpid(), const_cast<void*>(src), user_dst, len, true);
#else
  asan_check_user(user_dst, len);
  return with_fixup([&] { copy_bytes(reinterpret_cast<void*>(user_dst), src, len); });
#endif
}

int plain_clear_user(std::uint64_t user_dst, std::size_t len) noexcept {
  if (t_remote) {
    static const unsigned char zeros[4096] = {};
    for (std::size_t off = 0; off < len; off += sizeof zeros) {
      const std::size_t n = len - off < sizeof zeros ? len - off : sizeof zeros;
      if (remote_rw(t_remote, const_cast<unsigned char*>(zeros), user_dst + off, n, true)) {
        return -EFAULT;
      }
    }
    return 0;
  }
  asan_check_user(user_dst, len);
  return with_fixup([&] { zero_bytes(reinterpret_cast<void*>(user_dst), len); });
}

int plain_check_user_pages(std::uint64_t va, std::uint64_t len, bool write) noexcept {
  const std::uint64_t ps = host_page_size();
  const std::uint64_t first = va & ~(ps - 1);
  const std::uint64_t last = (va + len - 1) & ~(ps - 1);
  if (t_remote) {
    // GUP on another mm: read each page; for FOLL_WRITE write the byte back, which fails
    // on read-only memory as the fault would.
    for (std::uint64_t page = first;; page += ps) {
      unsigned char b = 0;
      if (remote_rw(t_remote, &b, page, 1, false)) return -EFAULT;
      if (write && remote_rw(t_remote, &b, page, 1, true)) return -EFAULT;
      if (page == last) break;
    }
    return 0;
  }
  return with_fixup([&] {
    for (std::uint64_t page = first;; page += ps) {
      auto* p = reinterpret_cast<unsigned char*>(page);
      if (write) {
        touch_write(p);
      } else {
        touch_read(p);
      }
      if (page == last) break;
    }
  });
}

// The ordinary accessors, for the parts of a range outside host kernel pins.
int plain_access(PinOp op, std::uint64_t addr, char* buf, std::size_t len,
                 bool write_check) noexcept {
  switch (op) {
    case PinOp::kRead:
      return plain_copy_from_user(buf, addr, len);
    case PinOp::kWrite:
      return plain_copy_to_user(addr, buf, len);
    case PinOp::kZero:
      return plain_clear_user(addr, len);
    case PinOp::kCheck:
      return plain_check_user_pages(addr, len, write_check);
  }
  return -EFAULT;
}

}  // namespace

int copy_from_user(void* dst, std::uint64_t user_src, std::size_t len) noexcept {
  if (len == 0) return 0;
  if (should_fail()) return -EFAULT;  // fail_usercopy
  if (user_src == 0 || range_wraps(user_src, len)) return -EFAULT;
  if (kernel_pins_alive()) {
    return kernel_pin_access(PinOp::kRead, user_src, static_cast<char*>(dst), len, false,
                             plain_access);
  }
  return plain_copy_from_user(dst, user_src, len);
}

int copy_to_user(std::uint64_t user_dst, const void* src, std::size_t len) noexcept {
  if (len == 0) return 0;
  if (should_fail()) return -EFAULT;  // fail_usercopy
  if (user_dst == 0 || range_wraps(user_dst, len)) return -EFAULT;
  if (kernel_pins_alive()) {
    return kernel_pin_access(PinOp::kWrite, user_dst,
                             const_cast<char*>(static_cast<const char*>(src)), len, false,
                             plain_access);
  }
  return plain_copy_to_user(user_dst, src, len);
}

int clear_user(std::uint64_t user_dst, std::size_t len) noexcept {
  if (len == 0) return 0;
  if (user_dst == 0 || range_wraps(user_dst, len)) return -EFAULT;
  if (kernel_pins_alive()) {
    return kernel_pin_access(PinOp::kZero, user_dst, nullptr, len, false, plain_access);
  }
  return plain_clear_user(user_dst, len);
}

int check_user_pages(std::uint64_t va, std::uint64_t len, bool write) noexcept {
  if (len == 0) return 0;
  if (range_wraps(va, len)) return -EFAULT;
  if (kernel_pins_alive()) {
    return kernel_pin_access(PinOp::kCheck, va, nullptr, static_cast<std::size_t>(len), write,
                             plain_access);
  }
  return plain_check_user_pages(va, len, write);
}

}  // namespace fastmap::sim
