// The simulated kernel's fault injection: the per-thread fail-nth counter of
// Documentation/fault-injection/fault-injection.rst (/proc/<pid>/task/<tid>/fail-nth).
//
// Writing N arms it: the Nth fault-injection site the thread then reaches fails, and the
// counter reads back 0 from then on (until rewritten). The sites are the simulator's
// analogues of the kernel's failslab/fail_page_alloc/fail_usercopy points: object and pin
// allocation fail with -ENOMEM, user copies with -EFAULT. The counter is the calling
// thread's, as the kernel's is the task's.
#pragma once

#include <cstdint>

namespace fastmap::sim {

// Arms (n > 0) or disarms (0) the calling thread's counter.
void fail_nth_set(unsigned n) noexcept;
// What the calling thread's fail-nth file reads: the sites left before the fault, 0 once
// it fired or when disarmed.
unsigned fail_nth_get() noexcept;
// A fault-injection site: true when this one must fail (the counter reached it).
bool should_fail() noexcept;
// Faults injected so far by every thread of this process (for tests).
std::uint64_t fail_nth_injected() noexcept;

}  // namespace fastmap::sim
