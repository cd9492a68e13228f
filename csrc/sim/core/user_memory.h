// Access to "user" memory from the simulated kernel.
//
// The simulator runs in the same process as its caller, so user pointers are real process
// addresses. Like the kernel's copy_from_user/copy_to_user, these never crash on a bad
// pointer: the copy runs under a fault fixup (the kernel's exception-table idea) — a
// SIGSEGV/SIGBUS raised inside it is caught and turned into -EFAULT, and any other fault is
// passed on to the handler that was installed before. Pinning checks touch every page the
// way get_user_pages does (a read, or an atomic no-op write for FOLL_WRITE, which also breaks
// copy-on-write), so unmapped, PROT_NONE and read-only memory fail exactly where GUP fails.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>

namespace fastmap::sim {

// Whose memory user pointers name, for the calling thread while the scope lives: by
// default this process's; inside a RemoteMmScope(pid) another process's, reached with
// process_vm_readv/writev (sim-run's owner process serving a call forwarded by a forked
// child). A failed or short remote access is -EFAULT, as a bad pointer is. The scope is
// the calling thread's: device DMA through a domain reaches the memory of whichever process
// made the call that triggers it, not necessarily the process that pinned the pages.
class RemoteMmScope {
 public:
  explicit RemoteMmScope(pid_t pid) noexcept;
  ~RemoteMmScope();
  RemoteMmScope(const RemoteMmScope&) = delete;
  RemoteMmScope& operator=(const RemoteMmScope&) = delete;

 private:
  pid_t saved_;
};
// The remote process of the calling thread's scope, or 0 for this process.
pid_t current_remote_mm() noexcept;
// Sets it for the calling thread outright (a thread that serves one process for life).
void set_thread_remote_mm(pid_t pid) noexcept;

// 0 or -EFAULT.
int copy_from_user(void* dst, std::uint64_t user_src, std::size_t len) noexcept;
int copy_to_user(std::uint64_t user_dst, const void* src, std::size_t len) noexcept;

// Fill `len` bytes at user_dst with zeros: 0 or -EFAULT.
int clear_user(std::uint64_t user_dst, std::size_t len) noexcept;

// What pin_user_pages would say about [va, va+len): 0 if every page is mapped (and
// writable when `write`), else -EFAULT. Pages are faulted in, as GUP does.
int check_user_pages(std::uint64_t va, std::uint64_t len, bool write) noexcept;

// Installs the SIGSEGV/SIGBUS/SIGTRAP handler of user copies and MMIO mappings again if
// another handler replaced it (that one is then chained to). Idempotent.
void install_fault_handlers() noexcept;

// The host page size (PAGE_SIZE in the kernel the simulator models).
std::uint64_t host_page_size() noexcept;

}  // namespace fastmap::sim
