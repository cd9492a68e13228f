// sim-run's LD_PRELOAD interposer: the program's view of the simulated kernel.
//
// The process that first touches a simulated path hosts the simulator (the owner); a child
// it forks forwards every simulated call to it over a unix socket (forward.cc), so parent
// and child share the open files as they would on a real kernel. Every simulated file has
// a real fd number (a reserved fd open of /dev/null, always close-on-exec), so the
// program's fd calls keep working; the calls in fd_calls.cc/path_calls.cc are answered by
// the simulator for those fds and paths and never reach the host.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>

struct fastmap_sim;

namespace fastmap::preload {

// Simulated fds this process knows (reserved fd numbers), and the FD_CLOEXEC flag the
// program set on each (the reserved fd itself is always close-on-exec).
inline constexpr int kMaxFd = 1 << 16;
bool is_simfd(int fd) noexcept;
void mark_simfd(int fd, bool cloexec) noexcept;
void unmark_simfd(int fd) noexcept;
bool simfd_cloexec(int fd) noexcept;
void set_simfd_cloexec(int fd, bool on) noexcept;

// A reserved fd: the host's /dev/null, close-on-exec. fd or -errno.
int reserve_fd() noexcept;

// Does the simulator own this path (/dev/iommu, /dev/vfio[/...], the VFIO sysfs)?
bool is_sim_dev(const char* path) noexcept;
bool is_sim_sysfs(const char* path) noexcept;

// The operations, on whichever side hosts the simulator. Results are >= 0 or -errno.
enum class Op : std::uint32_t {
  kHello = 1, kFork, kOpen, kClose, kIoctl, kRead, kWrite, kPread, kPwrite, kMmap,
  kChardev, kDupTo, kNodeChardev, kNodeList, kSysRead, kSysReadlink, kSysList, kSysType,
  kSysRealpath, kReaped,
};

struct Call {
  Op op;
  int fd = -1;
  std::uint64_t a = 0, b = 0, c = 0, d = 0;
  const char* path = nullptr;
};
struct Result {
  long ret = 0;
  std::uint64_t a = 0, b = 0;  // ioctl-made fd consumed; mmap address; chardev major/minor
};

// Runs a call with byte results (sysfs reads, lists) copied to buf[0..size).
Result sim_call(const Call& call, char* buf = nullptr, std::size_t size = 0) noexcept;

// The same call on the simulator hosted here (the owner; forward.cc's server runs it for
// its children).
Result local_call(const Call& call, char* buf, std::size_t size) noexcept;

// This process's role: the owner (hosting the simulator, created on first use) or a
// forked child that forwards to it.
bool is_forwarder() noexcept;
Result forward_call(const Call& call, char* buf, std::size_t size) noexcept;
// A child this process reaped (wait calls): returns once the owner has dropped that
// child's fd table, if it had one, so its simulated files are closed as on a real kernel.
void child_reaped(pid_t pid) noexcept;
// The simulator hosted here (created from FASTMAP_SIM_CONFIG on first use), or nullptr if
// it could not be created.
struct ::fastmap_sim* owner_sim() noexcept;
bool owner_sim_started() noexcept;
// The owner's fd allocation while serving a child (forward.cc): *handled says whether the
// calling thread serves one; then the child's reserved fd or -EMFILE.
int serving_alloc(bool* handled) noexcept;
bool serving_release(int fd) noexcept;

// A -errno result as the libc convention: errno set, -1 returned.
long set_errno(long rc) noexcept;

}  // namespace fastmap::preload
