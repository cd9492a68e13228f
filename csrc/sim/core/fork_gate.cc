#include "sim/core/fork_gate.h"

#include <pthread.h>

#include <new>

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#endif

namespace fastmap::sim {

namespace {

// Storage that is never destroyed: a thread may still pass the gate while static
// destructors run.
alignas(std::shared_mutex) unsigned char gate_storage[sizeof(std::shared_mutex)];

std::shared_mutex& gate() {
  static std::shared_mutex* g = [] {
    auto* m = new (gate_storage) std::shared_mutex();
    ::pthread_atfork(
        [] { gate().lock(); },  // prepare: wait until no thread is inside the simulator
        [] { gate().unlock(); },
        // The child cannot unlock: glibc's rwlock knows its writer by thread id and the
        // child's thread has a new one. Nothing can be inside the gate in the child, so
        // it starts from a fresh, unlocked gate.
        [] {
#if defined(__SANITIZE_THREAD__)
          // TSan cannot see the fresh gate replace the write-locked one: tell it the lock
          // is gone (this thread took it in the prepare handler).
          __tsan_mutex_pre_unlock(gate_storage, 0);
          __tsan_mutex_post_unlock(gate_storage, 0);
#endif
          new (gate_storage) std::shared_mutex();
        });
    return m;
  }();
  return *g;
}

}  // namespace

SimEntry::SimEntry() : lock_(gate()) {}

}  // namespace fastmap::sim
