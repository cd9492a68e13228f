// fork(): a child forwards its simulated calls to the owner (the process hosting the
// simulator) over a SOCK_SEQPACKET unix socket, one per child. At fork the owner clones the
// forking process's fd table in the simulator (the files are shared, as fork shares open
// file descriptions) and a thread of the owner serves the child: it runs each call on the
// child's table, reaching the child's memory with process_vm_readv/writev (the owner is
// the child's ancestor, so ptrace access is allowed). When the child exits or execs its
// socket closes (close-on-exec) and the owner drops its table, closing its fds. The
// parent's wait calls (wait_calls.cc) block until that is done for the child they reaped,
// as a real kernel closes a child's files before its parent's wait returns.
//
// A forwarded call that may install an fd (open, ioctl) carries a reserved fd the
// child reserved; the owner hands that number to the simulator as the new fd.
#include <fcntl.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <vector>

#include "fastmap_sim.h"
#include "preload/preload.h"
#include "preload/real.h"

namespace fastmap::preload {

namespace {

constexpr std::size_t kPath = 4096;
constexpr std::size_t kData = 8192;

struct Request {
  Op op;
  std::int32_t fd;
  std::int32_t spare;  // reserved fd for a new simulated fd, or -1
  std::uint32_t path_len;
  std::uint64_t a, b, c, d;
  std::uint64_t size;  // bytes of data wanted back
  char path[kPath];
};
struct Reply {
  std::int64_t ret;
  std::int32_t spare_used;
  std::uint32_t data_len;
  std::uint64_t a, b;
  char data[kData];
};

std::atomic<bool> g_forwarder{false};
int g_sock = -1;        // child: the socket to the owner
std::mutex g_sock_mu;   // child: one call in flight per socket
// Owner: the links it serves (sockets children must not keep open), each with its child's
// pid once the child's hello arrived (0 before); a link leaves the list after its table
// is dropped, which g_served_cv announces.
struct Link {
  int sock;
  pid_t pid;
};
std::mutex g_serve_mu;
std::vector<Link> g_served;
std::condition_variable g_served_cv;
int g_pending[2] = {-1, -1};  // the socketpair made in prepare
int g_pending_table = -1;

// Owner side, per serving thread: the spare reserved fd of the call being run.
thread_local bool t_serving = false;
thread_local int t_spare = -1;
thread_local bool t_spare_used = false;

int real_close(int fd) { return FASTMAP_REAL("close", int (*)(int))(fd); }

bool send_all(int sock, const void* p, std::size_t n, int pass_fd = -1) {
  struct iovec iov{const_cast<void*>(p), n};
  struct msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(struct cmsghdr) char ctl[CMSG_SPACE(sizeof(int))];
  if (pass_fd >= 0) {
    msg.msg_control = ctl;
    msg.msg_controllen = sizeof ctl;
    struct cmsghdr* cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(cm), &pass_fd, sizeof(int));
  }
  ssize_t r;
  do {
    r = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
  } while (r < 0 && errno == EINTR);
  return r == static_cast<ssize_t>(n);
}

ssize_t recv_msg(int sock, void* p, std::size_t n, int* passed_fd) {
  struct iovec iov{p, n};
  struct msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(struct cmsghdr) char ctl[CMSG_SPACE(sizeof(int))];
  msg.msg_control = ctl;
  msg.msg_controllen = sizeof ctl;
  ssize_t r;
  do {
    r = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  } while (r < 0 && errno == EINTR);
  if (passed_fd) *passed_fd = -1;
  for (struct cmsghdr* cm = CMSG_FIRSTHDR(&msg); r > 0 && cm; cm = CMSG_NXTHDR(&msg, cm)) {
    if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(cm), sizeof fd);
      if (passed_fd) {
        *passed_fd = fd;
      } else {
        real_close(fd);
      }
    }
  }
  return r;
}

void start_server(int sock, int table);

// Owner: blocks until no link serves `pid` any more. Links whose hello has not arrived yet
// (pid 0) may be that child's, so they are waited for too; a reaped child's hello, if it
// sent one, is already queued on its socket.
void await_reaped(pid_t pid) {
  std::unique_lock<std::mutex> lk(g_serve_mu);
  g_served_cv.wait(lk, [&] {
    for (const Link& l : g_served) {
      if (l.pid == pid || l.pid == 0) return false;
    }
    return true;
  });
}

// Our sockets move to the top of the fd range, out of the way of the program's own
// numbering (the kernel hands the program the lowest free fd; ours must not be it).
int move_high(int fd) {
  struct rlimit rl;
  if (fd < 0 || ::getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < 256) return fd;
  const rlim_t cap = rl.rlim_cur < static_cast<rlim_t>(kMaxFd) ? rl.rlim_cur : kMaxFd;
  const int high = FASTMAP_REAL("fcntl", int (*)(int, int, ...))(
      fd, F_DUPFD_CLOEXEC, static_cast<int>(cap - 128));
  if (high < 0) return fd;
  real_close(fd);
  return high;
}

struct Served {
  int sock;
  int table;
};

void* serve(void* arg) {
  Served s = *static_cast<Served*>(arg);
  delete static_cast<Served*>(arg);
  fastmap_sim* sim = owner_sim();
  static thread_local Request req;
  static thread_local Reply rep;
  pid_t pid = 0;
  if (recv_msg(s.sock, &req, sizeof req, nullptr) > 0 && req.op == Op::kHello) {
    pid = static_cast<pid_t>(req.a);
  }
  {
    std::lock_guard<std::mutex> g(g_serve_mu);
    for (Link& l : g_served) {
      if (l.sock == s.sock) l.pid = pid > 0 ? pid : -1;
    }
  }
  g_served_cv.notify_all();
  t_serving = true;
  fastmap_sim_set_thread_task(s.table, pid);
  while (pid > 0) {
    int passed = -1;
    const ssize_t n = recv_msg(s.sock, &req, sizeof req, &passed);
    if (n <= 0) break;
    std::memset(&rep, 0, offsetof(Reply, data));
    if (req.op == Op::kFork) {
      // A grandchild is being forked: serve its socket with a copy of this table.
      const int table = fastmap_sim_table_clone(sim, s.table);
      if (table >= 0 && passed >= 0) {
        start_server(move_high(passed), table);
      } else if (passed >= 0) {
        real_close(passed);
      }
      rep.ret = table < 0 ? table : 0;
    } else if (req.op == Op::kReaped) {
      // The child reaped one of its own: answer once that one's table is gone.
      if (passed >= 0) real_close(passed);
      await_reaped(static_cast<pid_t>(req.a));
    } else {
      if (passed >= 0) real_close(passed);
      Call c{req.op, req.fd, req.a, req.b, req.c, req.d, nullptr};
      req.path[kPath - 1] = '\0';
      if (req.path_len) c.path = req.path;
      t_spare = req.spare;
      t_spare_used = false;
      const std::size_t want = req.size < kData ? req.size : kData;
      Result r = local_call(c, want ? rep.data : nullptr, want);
      rep.ret = r.ret;
      rep.a = r.a;
      rep.b = r.b;
      rep.spare_used = t_spare_used;
      rep.data_len = r.ret > 0 && want ? static_cast<std::uint32_t>(
                                             static_cast<std::size_t>(r.ret) < want ? r.ret : want)
                                       : 0;
      t_spare = -1;
    }
    if (!send_all(s.sock, &rep, offsetof(Reply, data) + rep.data_len)) break;
  }
  // The child is gone (exit or exec): its fds close, newest first.
  if (sim) fastmap_sim_table_drop(sim, s.table);
  {
    std::lock_guard<std::mutex> g(g_serve_mu);
    std::erase_if(g_served, [&](const Link& l) { return l.sock == s.sock; });
  }
  g_served_cv.notify_all();
  real_close(s.sock);
  return nullptr;
}

void start_server(int sock, int table) {
  {
    std::lock_guard<std::mutex> g(g_serve_mu);
    g_served.push_back(Link{sock, 0});
  }
  pthread_t th;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  auto* arg = new Served{sock, table};
  if (pthread_create(&th, &attr, serve, arg) != 0) {
    delete arg;
    fastmap_sim_table_drop(owner_sim(), table);
    {
      std::lock_guard<std::mutex> g(g_serve_mu);
      std::erase_if(g_served, [&](const Link& l) { return l.sock == sock; });
    }
    g_served_cv.notify_all();
    real_close(sock);
  }
  pthread_attr_destroy(&attr);
}

bool hosting() noexcept { return !g_forwarder.load() && owner_sim_started(); }

void prepare() noexcept {
  g_pending[0] = g_pending[1] = -1;
  g_pending_table = -1;
  const bool fwd = g_forwarder.load();
  if (!fwd && !hosting()) return;  // no simulator yet: the child starts its own
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return;
  sv[0] = move_high(sv[0]);
  sv[1] = move_high(sv[1]);
  if (fwd) {
    // Ask the owner to serve sv[0] with a copy of our table.
    Request req{};
    req.op = Op::kFork;
    Reply rep{};
    std::lock_guard<std::mutex> g(g_sock_mu);
    if (!send_all(g_sock, &req, offsetof(Request, path), sv[0]) ||
        recv_msg(g_sock, &rep, sizeof rep, nullptr) <= 0 || rep.ret != 0) {
      real_close(sv[0]);
      real_close(sv[1]);
      return;
    }
    real_close(sv[0]);
    g_pending[1] = sv[1];
  } else {
    const int table = fastmap_sim_table_clone(owner_sim(), 0);
    if (table < 0) {
      real_close(sv[0]);
      real_close(sv[1]);
      return;
    }
    g_pending[0] = sv[0];
    g_pending[1] = sv[1];
    g_pending_table = table;
  }
  g_serve_mu.lock();  // the child must not inherit it held by another thread
}

void parent() noexcept {
  if (g_pending[1] < 0) return;
  g_serve_mu.unlock();
  if (g_pending[0] >= 0) start_server(g_pending[0], g_pending_table);
  real_close(g_pending[1]);
}

void child() noexcept {
  if (g_pending[1] < 0) return;
  // The owner's server sockets and our parent's socket belong to other processes' links.
  for (const Link& l : g_served) real_close(l.sock);
  g_served.clear();
  g_serve_mu.unlock();
  new (&g_served_cv) std::condition_variable();  // a waiter of the parent's may have used it
  if (g_pending[0] >= 0) real_close(g_pending[0]);
  if (g_sock >= 0) real_close(g_sock);
  new (&g_sock_mu) std::mutex();  // another thread may have held it at fork
  g_sock = g_pending[1];
  g_forwarder.store(true);
  Request req{};
  req.op = Op::kHello;
  req.a = static_cast<std::uint64_t>(::getpid());
  send_all(g_sock, &req, offsetof(Request, path));
}

__attribute__((constructor)) void install_atfork() {
  pthread_atfork(prepare, parent, child);
}

}  // namespace

bool is_forwarder() noexcept { return g_forwarder.load(std::memory_order_relaxed); }

void child_reaped(pid_t pid) noexcept {
  if (pid <= 0) return;
  if (is_forwarder()) {
    // The owner serves our children too: it answers once this one's table is gone.
    forward_call(Call{Op::kReaped, -1, static_cast<std::uint64_t>(pid), 0, 0, 0, nullptr},
                 nullptr, 0);
    return;
  }
  await_reaped(pid);
}

// The owner's fd allocator for a call served for a child: the child's reserved fd.
int serving_alloc(bool* handled) noexcept {
  *handled = t_serving;
  if (!t_serving) return 0;
  if (t_spare < 0 || t_spare_used) return -EMFILE;
  t_spare_used = true;
  return t_spare;
}

bool serving_release(int fd) noexcept {
  if (!t_serving) return false;
  if (fd == t_spare) t_spare_used = false;
  return true;
}

Result forward_call(const Call& c, char* buf, std::size_t size) noexcept {
  static thread_local Request req;
  static thread_local Reply rep;
  Result r;
  std::memset(&req, 0, offsetof(Request, path));
  req.op = c.op;
  req.fd = c.fd;
  req.a = c.a;
  req.b = c.b;
  req.c = c.c;
  req.d = c.d;
  req.size = buf ? size : 0;
  req.spare = -1;
  std::size_t len = offsetof(Request, path);
  if (c.path) {
    const std::size_t n = std::strlen(c.path);
    if (n >= kPath) {
      r.ret = -ENAMETOOLONG;
      return r;
    }
    std::memcpy(req.path, c.path, n + 1);
    req.path_len = static_cast<std::uint32_t>(n);
    len += n + 1;
  }
  if (c.op == Op::kOpen || c.op == Op::kIoctl) {
    req.spare = reserve_fd();
    if (req.spare < 0) {
      r.ret = req.spare;
      return r;
    }
  }
  {
    std::lock_guard<std::mutex> g(g_sock_mu);
    if (!send_all(g_sock, &req, len) || recv_msg(g_sock, &rep, sizeof rep, nullptr) <= 0) {
      rep.ret = -EIO;  // the owner is gone
      rep.spare_used = 0;
      rep.data_len = 0;
    }
  }
  if (req.spare >= 0) {
    if (rep.spare_used) {
      mark_simfd(req.spare, true);
    } else {
      real_close(req.spare);
    }
  }
  r.ret = rep.ret;
  r.a = rep.a;
  r.b = rep.b;
  if (buf && rep.data_len) std::memcpy(buf, rep.data, rep.data_len < size ? rep.data_len : size);
  return r;
}

}  // namespace fastmap::preload
