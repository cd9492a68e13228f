#include "sim/core/user_memory.h"

#include <setjmp.h>
#include <signal.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>

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

void on_fault(int sig, siginfo_t* info, void* context) {
  if (sigjmp_buf* jb = t_fixup) {
    t_fixup = nullptr;
    siglongjmp(*jb, 1);
  }
  // Not ours: hand it to whoever was there before (Python's faulthandler, a debugger's
  // handler, or the default action, which then kills the process as it would have).
  const struct sigaction& prev = sig == SIGSEGV ? g_prev_segv : g_prev_bus;
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
}

void install_fault_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa{};
    sa.sa_sigaction = on_fault;
    // SA_NODEFER: the signal is not blocked while handling, so jumping out of the handler
    // needs no signal-mask restore (and sigsetjmp no sigprocmask call on the fast path).
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_prev_segv);
    sigaction(SIGBUS, &sa, &g_prev_bus);
  });
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

}  // namespace

RemoteMmScope::RemoteMmScope(pid_t pid) noexcept : saved_(t_remote) { t_remote = pid; }
RemoteMmScope::~RemoteMmScope() { t_remote = saved_; }
pid_t current_remote_mm() noexcept { return t_remote; }
void set_thread_remote_mm(pid_t pid) noexcept { t_remote = pid; }

std::uint64_t host_page_size() noexcept {
  static const std::uint64_t ps = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  return ps;
}

int copy_from_user(void* dst, std::uint64_t user_src, std::size_t len) noexcept {
  if (len == 0) return 0;
  if (user_src == 0 || range_wraps(user_src, len)) return -EFAULT;
  if (t_remote) return remote_rw(t_remote, dst, user_src, len, false);
  return with_fixup([&] { copy_bytes(dst, reinterpret_cast<const void*>(user_src), len); });
}

int copy_to_user(std::uint64_t user_dst, const void* src, std::size_t len) noexcept {
  if (len == 0) return 0;
  if (user_dst == 0 || range_wraps(user_dst, len)) return -EFAULT;
  if (t_remote) return remote_rw(t_remote, const_cast<void*>(src), user_dst, len, true);
  return with_fixup([&] { copy_bytes(reinterpret_cast<void*>(user_dst), src, len); });
}

int clear_user(std::uint64_t user_dst, std::size_t len) noexcept {
  if (len == 0) return 0;
  if (user_dst == 0 || range_wraps(user_dst, len)) return -EFAULT;
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
  return with_fixup([&] { zero_bytes(reinterpret_cast<void*>(user_dst), len); });
}

int check_user_pages(std::uint64_t va, std::uint64_t len, bool write) noexcept {
  if (len == 0) return 0;
  if (range_wraps(va, len)) return -EFAULT;
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

}  // namespace fastmap::sim
