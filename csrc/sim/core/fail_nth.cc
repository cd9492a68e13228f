#include "sim/core/fail_nth.h"

#include <atomic>

namespace fastmap::sim {

namespace {
thread_local unsigned t_fail_nth = 0;
std::atomic<std::uint64_t> g_injected{0};
}  // namespace

void fail_nth_set(unsigned n) noexcept { t_fail_nth = n; }

unsigned fail_nth_get() noexcept { return t_fail_nth; }

bool should_fail() noexcept {
  if (t_fail_nth == 0) return false;
  if (--t_fail_nth != 0) return false;
  g_injected.fetch_add(1, std::memory_order_relaxed);
  return true;
}

std::uint64_t fail_nth_injected() noexcept { return g_injected.load(std::memory_order_relaxed); }

}  // namespace fastmap::sim
