// The bindings' one error convention. Core calls return 0 or -errno; check() turns a failure
// into ErrnoError, which module.cc registers with pybind11 to raise
// fastmap.errors.KernelError.from_errno(errno, call) (a typed OSError: NotFoundError is also a
// FileNotFoundError, and so on).
#pragma once

#include <exception>
#include <string>

namespace fastmap::bindings {

class ErrnoError : public std::exception {
 public:
  ErrnoError(int errno_value, std::string call) : errno_value_(errno_value), call_(std::move(call)) {}
  int errno_value() const noexcept { return errno_value_; }
  const std::string& call() const noexcept { return call_; }
  const char* what() const noexcept override { return call_.c_str(); }

 private:
  int errno_value_;
  std::string call_;
};

// rc if it is >= 0; throws ErrnoError(-rc, call) if it is -errno.
long check(long rc, const std::string& call);

}  // namespace fastmap::bindings
