// The kernel's fail-nth file on the simulator's counter (fastmap_sim_fail_nth_*): writing N
// arms it for the thread, reading gives "<sites left>\n", 0 once the fault fired. Only the
// calling thread's file opens here (the counter is thread-local in the simulator), and only
// in the process hosting the simulator: a forked child's simulated calls run in its owner,
// so it sees no fault injection (its open gets ENOENT, as on a kernel without it).
//
// debugfs: the selftests write failslab/fail_page_alloc knobs (ignore-gfp-wait, verbose...)
// through a real directory fd, so /sys/kernel/debug is answered by a private temporary
// directory holding those knobs as plain files; writes are accepted and change nothing,
// because the simulator's counter already covers every site the knobs would enable.
#include "preload/fail_nth.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <mutex>

#include "fastmap_sim.h"
#include "preload/preload.h"
#include "preload/real.h"

namespace fastmap::preload {

namespace {

constexpr int kNotOurs = 1;
constexpr const char* kDebugfs = "/sys/kernel/debug";

// Per reserved fd: is it a fail-nth file, and its read position.
struct NthFd {
  bool open = false;
  off_t pos = 0;
};
NthFd g_fds[kMaxFd];
std::mutex g_mu;

bool parse_uint(const char* s, const char* end, unsigned long* out) {
  // "N", optionally followed by a newline (kstrtouint semantics, base 0).
  std::string text(s, end);
  if (!text.empty() && text.back() == '\n') text.pop_back();
  if (text.empty() || text[0] == '-' || text[0] == ' ') return false;
  char* stop = nullptr;
  errno = 0;
  const unsigned long v = std::strtoul(text.c_str(), &stop, 0);
  if (errno || *stop || v > 0xffffffffUL) return false;
  *out = v;
  return true;
}

// Is `path` the calling thread's fail-nth file? -ENOENT for another thread's.
int match_path(const char* path) {
  const pid_t tid = ::gettid();
  const pid_t pid = ::getpid();
  char mine[3][96];
  std::snprintf(mine[0], sizeof mine[0], "/proc/self/task/%d/fail-nth", tid);
  std::snprintf(mine[1], sizeof mine[1], "/proc/%d/task/%d/fail-nth", pid, tid);
  std::snprintf(mine[2], sizeof mine[2], "/proc/thread-self/fail-nth");
  for (const auto& m : mine) {
    if (std::strcmp(path, m) == 0) return 0;
  }
  const std::size_t n = std::strlen(path);
  const char suffix[] = "/fail-nth";
  if (std::strncmp(path, "/proc/", 6) == 0 && n > sizeof suffix &&
      std::strcmp(path + n - (sizeof suffix - 1), suffix) == 0) {
    return -ENOENT;  // another task's: not modelled (see above)
  }
  return kNotOurs;
}

std::string g_debugfs_dir;
pid_t g_debugfs_owner = 0;

int remove_entry(const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); }

void remove_debugfs() {
  if (!g_debugfs_dir.empty() && ::getpid() == g_debugfs_owner) {
    ::nftw(g_debugfs_dir.c_str(), remove_entry, 8, FTW_DEPTH | FTW_PHYS);
  }
}

bool write_file(const std::string& path, const char* content) {
  auto real_open = FASTMAP_REAL("open", int (*)(const char*, int, ...));
  const int fd = real_open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  const std::size_t len = std::strlen(content);
  const bool ok = FASTMAP_REAL("write", ssize_t (*)(int, const void*, size_t))(fd, content, len) ==
                  static_cast<ssize_t>(len);
  FASTMAP_REAL("close", int (*)(int))(fd);
  return ok;
}

// The knobs of Documentation/fault-injection/fault-injection.rst, with their defaults.
bool make_debugfs() {
  char tmpl[] = "/tmp/fastmap-debugfs-XXXXXX";
  if (!::mkdtemp(tmpl)) return false;
  g_debugfs_dir = tmpl;
  g_debugfs_owner = ::getpid();
  std::atexit(remove_debugfs);
  static const char* const kDirs[] = {"failslab", "fail_page_alloc", "fail_usercopy"};
  static const char* const kKnobs[][2] = {
      {"probability", "0\n"}, {"interval", "1\n"}, {"times", "1\n"}, {"space", "0\n"},
      {"verbose", "2\n"}, {"verbose_ratelimit_interval_ms", "5000\n"},
      {"verbose_ratelimit_burst", "10\n"}, {"task-filter", "N\n"}};
  for (const char* dir : kDirs) {
    const std::string d = g_debugfs_dir + "/" + dir;
    if (::mkdir(d.c_str(), 0700) != 0) return false;
    for (const auto& knob : kKnobs) {
      if (!write_file(d + "/" + knob[0], knob[1])) return false;
    }
    if (std::strcmp(dir, "fail_usercopy") != 0 && !write_file(d + "/ignore-gfp-wait", "Y\n")) {
      return false;
    }
  }
  return write_file(g_debugfs_dir + "/fail_page_alloc/ignore-gfp-highmem", "Y\n") &&
         write_file(g_debugfs_dir + "/fail_page_alloc/min-order", "1\n") &&
         write_file(g_debugfs_dir + "/failslab/cache-filter", "N\n");
}

// With FASTMAP_SIM_FAIL_NTH_REPORT=FILE, every write to a fail-nth file rewrites FILE with
// the number of faults injected so far in this process (the selftest suite's proof that
// injection really happened; the harness ends each test's process with _exit, so an exit
// hook would never run).
void report_injected() {
  const char* file = std::getenv("FASTMAP_SIM_FAIL_NTH_REPORT");
  if (!file || !*file) return;
  char text[32];
  std::snprintf(text, sizeof text, "%llu\n", fastmap_sim_fail_nth_injected());
  write_file(file, text);
}

}  // namespace

bool debugfs_path(const char* path, std::string* out) noexcept {
  if (!path) return false;
  const std::size_t n = std::strlen(kDebugfs);
  if (std::strncmp(path, kDebugfs, n) != 0 || (path[n] != '\0' && path[n] != '/')) return false;
  if (is_forwarder()) return false;
  try {
    std::lock_guard<std::mutex> g(g_mu);
    if (g_debugfs_dir.empty() && !make_debugfs()) return false;
    *out = g_debugfs_dir + (path + n);
    return true;
  } catch (...) {
    return false;
  }
}

int failnth_open(const char* path, int flags) noexcept {
  if (!path) return kNotOurs;
  const int m = match_path(path);
  if (m != 0) return m;
  if (is_forwarder()) return -ENOENT;
  if (flags & (O_CREAT | O_DIRECTORY | O_TMPFILE)) return (flags & O_DIRECTORY) ? -ENOTDIR : -EEXIST;
  const int fd = reserve_fd();
  if (fd < 0) return fd;
  if (!(flags & O_CLOEXEC)) ::fcntl(fd, F_SETFD, 0);
  std::lock_guard<std::mutex> g(g_mu);
  g_fds[fd] = NthFd{true, 0};
  return fd;
}

bool is_failnth_fd(int fd) noexcept {
  if (fd < 0 || fd >= kMaxFd) return false;
  std::lock_guard<std::mutex> g(g_mu);
  return g_fds[fd].open;
}

long failnth_read(int fd, void* buf, std::size_t n, off_t off) noexcept {
  char text[16];
  const int len = std::snprintf(text, sizeof text, "%u\n", fastmap_sim_fail_nth_get());
  off_t pos = off;
  if (off < 0) {
    std::lock_guard<std::mutex> g(g_mu);
    pos = g_fds[fd].pos;
  }
  if (pos >= len) return 0;
  const std::size_t k = std::min<std::size_t>(n, static_cast<std::size_t>(len - pos));
  std::memcpy(buf, text + pos, k);
  if (off < 0) {
    std::lock_guard<std::mutex> g(g_mu);
    g_fds[fd].pos = pos + static_cast<off_t>(k);
  }
  return static_cast<long>(k);
}

long failnth_write(int, const void* buf, std::size_t n) noexcept {
  const char* s = static_cast<const char*>(buf);
  unsigned long v = 0;
  if (n == 0 || n > 64) return -EINVAL;
  if (!parse_uint(s, s + n, &v)) return -EINVAL;
  fastmap_sim_fail_nth_set(static_cast<unsigned>(v));
  report_injected();
  return static_cast<long>(n);
}

void failnth_forget(int fd) noexcept {
  if (fd < 0 || fd >= kMaxFd) return;
  std::lock_guard<std::mutex> g(g_mu);
  g_fds[fd] = NthFd{};
}

}  // namespace fastmap::preload
