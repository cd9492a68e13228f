#include "sim/core/fork_gate.h"

#include <pthread.h>

namespace fastmap::sim {

namespace {

std::shared_mutex& gate() {
  // Never destroyed: a thread may still pass the gate while static destructors run.
  static std::shared_mutex* g = [] {
    auto* m = new std::shared_mutex();
    ::pthread_atfork([] { gate().lock(); }, [] { gate().unlock(); }, [] { gate().unlock(); });
    return m;
  }();
  return *g;
}

}  // namespace

SimEntry::SimEntry() : lock_(gate()) {}

}  // namespace fastmap::sim
