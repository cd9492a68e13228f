#include "sim/user_memory.h"

#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

namespace fastmap::sim {

namespace {

// process_vm_readv/writev move at most what one call accepts; loop over short transfers.
template <class Op>
int transfer(std::uint64_t user, void* local, std::size_t len, Op op) noexcept {
  static const pid_t self = ::getpid();
  auto* p = static_cast<char*>(local);
  while (len > 0) {
    iovec l{p, len};
    iovec r{reinterpret_cast<void*>(user), len};
    ssize_t n = op(self, &l, 1, &r, 1, 0);
    if (n <= 0) return -EFAULT;
    p += n;
    user += static_cast<std::uint64_t>(n);
    len -= static_cast<std::size_t>(n);
  }
  return 0;
}

bool range_wraps(std::uint64_t a, std::size_t len) { return len && a + len - 1 < a; }

}  // namespace

std::uint64_t host_page_size() noexcept {
  static const std::uint64_t ps = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  return ps;
}

int copy_from_user(void* dst, std::uint64_t user_src, std::size_t len) noexcept {
  if (len == 0) return 0;
  if (user_src == 0 || range_wraps(user_src, len)) return -EFAULT;
  return transfer(user_src, dst, len, ::process_vm_readv);
}

int copy_to_user(std::uint64_t user_dst, const void* src, std::size_t len) noexcept {
  if (len == 0) return 0;
  if (user_dst == 0 || range_wraps(user_dst, len)) return -EFAULT;
  return transfer(user_dst, const_cast<void*>(src), len, ::process_vm_writev);
}

int clear_user(std::uint64_t user_dst, std::size_t len) noexcept {
  static const char zeros[4096] = {};
  while (len > 0) {
    std::size_t n = std::min(len, sizeof zeros);
    if (int rc = copy_to_user(user_dst, zeros, n)) return rc;
    user_dst += n;
    len -= n;
  }
  return 0;
}

namespace {

// True when every byte of [start, end) lies in mappings with the wanted permission,
// according to /proc/self/maps.
bool maps_cover(std::uint64_t start, std::uint64_t end, bool write) noexcept {
  FILE* f = std::fopen("/proc/self/maps", "re");
  if (!f) return false;
  char line[512];
  std::uint64_t covered = start;
  while (covered < end && std::fgets(line, sizeof line, f)) {
    unsigned long lo = 0, hi = 0;
    char perms[5] = {};
    if (std::sscanf(line, "%lx-%lx %4s", &lo, &hi, perms) != 3) continue;
    if (hi <= covered) continue;
    if (lo > covered) break;  // a hole
    if (perms[0] != 'r' && perms[1] != 'w') break;  // PROT_NONE cannot be pinned
    if (write && perms[1] != 'w') break;
    covered = hi;
  }
  std::fclose(f);
  return covered >= end;
}

}  // namespace

int check_user_pages(std::uint64_t va, std::uint64_t len, bool write) noexcept {
  if (len == 0) return 0;
  if (range_wraps(va, len)) return -EFAULT;
  const std::uint64_t ps = host_page_size();
  const std::uint64_t start = va & ~(ps - 1);
  const std::uint64_t end = (va + len + ps - 1) & ~(ps - 1);
  // mincore fails with ENOMEM on any unmapped page: an exact, cheap existence test.
  std::vector<unsigned char> vec(std::min<std::uint64_t>((end - start) / ps, 1u << 16));
  for (std::uint64_t a = start; a < end;) {
    std::uint64_t n = std::min<std::uint64_t>((end - a) / ps, vec.size());
    if (::mincore(reinterpret_cast<void*>(a), n * ps, vec.data()) != 0) return -EFAULT;
    a += n * ps;
  }
  return maps_cover(start, end, write) ? 0 : -EFAULT;
}

}  // namespace fastmap::sim
