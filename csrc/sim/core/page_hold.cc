#include "sim/core/page_hold.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <tuple>

#include "sim/core/user_memory.h"

namespace fastmap::sim {

// The simulator's own mapping of one whole shared mapping of the process.
struct PageHold::Duplicate {
  std::uint64_t base = 0;
  std::uint64_t len = 0;
  ~Duplicate() { ::munmap(reinterpret_cast<void*>(base), len); }
};

namespace {

// What /proc/self/maps says about the mapping holding one address.
struct Vma {
  std::uint64_t start = 0, end = 0, offset = 0, inode = 0;
  unsigned major = 0, minor = 0;
  bool shared = false;
};

bool find_vma(std::uint64_t va, Vma* out) {
  // Read the whole file with read(2) and parse only the line holding `va`: stdio line by
  // line costs several times more, and this runs once per pin of shared memory.
  int fd = ::open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  std::string text;
  char chunk[65536];
  for (;;) {
    const ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n <= 0) break;
    text.append(chunk, static_cast<std::size_t>(n));
  }
  ::close(fd);
  for (std::size_t at = 0; at < text.size();) {
    std::size_t eol = text.find('\n', at);
    if (eol == std::string::npos) eol = text.size();
    const char* line = text.c_str() + at;
    char* rest = nullptr;
    const std::uint64_t start = std::strtoull(line, &rest, 16);
    const std::uint64_t end = std::strtoull(rest + 1, nullptr, 16);
    if (va >= start && va < end) {
      Vma v;
      char perms[5] = {};
      if (std::sscanf(line, "%" SCNx64 "-%" SCNx64 " %4s %" SCNx64 " %x:%x %" SCNu64, &v.start,
                      &v.end, perms, &v.offset, &v.major, &v.minor, &v.inode) != 7) {
        return false;
      }
      v.shared = perms[3] == 's';
      *out = v;
      return true;
    }
    at = eol + 1;
  }
  return false;
}

// Live duplicates by the object and range they map: (dev, inode, offset, length).
using Key = std::tuple<unsigned, unsigned, std::uint64_t, std::uint64_t, std::uint64_t>;
std::mutex registry_mu;
std::map<Key, std::weak_ptr<const PageHold::Duplicate>>& registry() {
  static auto* r = new std::map<Key, std::weak_ptr<const PageHold::Duplicate>>();
  return *r;
}

}  // namespace

PageHold::PageHold(std::uint64_t va, std::uint64_t len) noexcept : addr_(va) {
  // Another process's pages (sim-run's owner serving a child): reached through that mm.
  if (current_remote_mm() != 0) return;
  // Private memory is refused here, cheaply: the kernel will not duplicate it (EINVAL).
  // The host kernel pins it instead.
  void* probe = ::mremap(reinterpret_cast<void*>(va), 0, len, MREMAP_MAYMOVE);
  if (probe == MAP_FAILED) {
    pin_ = KernelPin::pin(va, len);
    if (pin_) addr_ = pin_->shadow();
    return;
  }
  ::munmap(probe, len);
  Vma vma;
  if (!find_vma(va, &vma) || !vma.shared || va + len > vma.end) return;
  try {
    const Key key{vma.major, vma.minor, vma.inode, vma.offset, vma.end - vma.start};
    std::lock_guard<std::mutex> g(registry_mu);
    auto& slot = registry()[key];
    auto dup = slot.lock();
    if (!dup) {
      void* m = ::mremap(reinterpret_cast<void*>(vma.start), 0, vma.end - vma.start,
                         MREMAP_MAYMOVE);
      if (m == MAP_FAILED) return;
      auto fresh = std::make_shared<Duplicate>();
      fresh->base = reinterpret_cast<std::uint64_t>(m);
      fresh->len = vma.end - vma.start;
      dup = fresh;
      slot = dup;
    }
    // Drop registry entries whose duplicate is gone, so the map stays small.
    for (auto it = registry().begin(); it != registry().end();) {
      it = it->second.expired() ? registry().erase(it) : std::next(it);
    }
    dup_ = std::move(dup);
    addr_ = dup_->base + (va - vma.start);
  } catch (const std::bad_alloc&) {
    dup_.reset();
    addr_ = va;  // no memory for the bookkeeping: reach the pages through the VA
  }
}

}  // namespace fastmap::sim
