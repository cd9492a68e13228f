// sim-run's side of the simulated kernel's fault injection: the calling thread's fail-nth
// file (/proc/self/task/TID/fail-nth, /proc/PID/task/TID/fail-nth, /proc/thread-self/
// fail-nth) backed by the simulator's per-thread counter, and the debugfs knobs of
// failslab/fail_page_alloc/fail_usercopy as a private directory that accepts writes.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <string>

namespace fastmap::preload {

// open(2) of a fail-nth path: a reserved fd, -errno, or 1 (not such a path).
int failnth_open(const char* path, int flags) noexcept;
bool is_failnth_fd(int fd) noexcept;
// read/write on a fail-nth fd; off < 0 uses (and moves) the fd's own position.
long failnth_read(int fd, void* buf, std::size_t n, off_t off) noexcept;
long failnth_write(int fd, const void* buf, std::size_t n) noexcept;
void failnth_forget(int fd) noexcept;

// A path under /sys/kernel/debug: *out becomes the same path in the private debugfs
// directory (created on first use) and true is returned.
bool debugfs_path(const char* path, std::string* out) noexcept;

}  // namespace fastmap::preload
