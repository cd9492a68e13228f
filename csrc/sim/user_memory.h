// Access to "user" memory from the simulated kernel.
//
// The simulator runs in the same process as its caller, so user pointers are real process
// addresses. Like copy_from_user/copy_to_user, these never crash on a bad pointer: they go
// through process_vm_readv/process_vm_writev on our own pid, which fail with EFAULT where
// the kernel would. Pinning checks ask the kernel whether the pages are really mapped
// (mincore) and writable (/proc/self/maps), as GUP would.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fastmap::sim {

// 0 or -EFAULT.
int copy_from_user(void* dst, std::uint64_t user_src, std::size_t len) noexcept;
int copy_to_user(std::uint64_t user_dst, const void* src, std::size_t len) noexcept;

// Fill `len` bytes at user_dst with zeros: 0 or -EFAULT.
int clear_user(std::uint64_t user_dst, std::size_t len) noexcept;

// What pin_user_pages would say about [va, va+len): 0 if every page is mapped (and
// writable when `write`), else -EFAULT.
int check_user_pages(std::uint64_t va, std::uint64_t len, bool write) noexcept;

// The host page size (PAGE_SIZE in the kernel the simulator models).
std::uint64_t host_page_size() noexcept;

}  // namespace fastmap::sim
