// Locked<T>: the locking policy of an engine object used from several threads (the Python
// bindings release the GIL around every call). Every access goes through with(), which
// holds the object's mutex for the call. Callers that also hold another lock (the GIL) must
// drop it first, so no thread ever waits for this mutex while holding it.
#pragma once

#include <mutex>
#include <utility>

namespace fastmap::engine {

template <typename T>
class Locked {
 public:
  template <typename F>
  decltype(auto) with(F&& f) {
    std::lock_guard<std::mutex> lk(mu_);
    return std::forward<F>(f)(obj_);
  }

 private:
  std::mutex mu_;
  T obj_;
};

}  // namespace fastmap::engine
