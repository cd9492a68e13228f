// A reference to an eventfd of the calling process (the kernel's eventfd_ctx_fdget), for
// interrupts the simulated kernel delivers: the device model signals it with a real
// write(2), so the program waits on it with poll/epoll/read as it would on Linux.
//
// The eventfd is the program's own fd, not a simulated one: the reference is a duplicate
// of it in this process (taken with pidfd_getfd when the call was forwarded by a sim-run
// child, whose fds live in another process), and keeps the eventfd alive after the program
// closes its fd, as the kernel's reference does.
#pragma once

#include <cstdint>
#include <memory>

namespace fastmap::sim {

class EventFdRef {
 public:
  // The eventfd behind `fd` in the calling process: 0 and *out set, -EBADF when fd is not
  // open, -EINVAL when it is not an eventfd, or another -errno (ENOMEM, EMFILE).
  static int get(int fd, std::unique_ptr<EventFdRef>* out) noexcept;
  ~EventFdRef();
  EventFdRef(const EventFdRef&) = delete;
  EventFdRef& operator=(const EventFdRef&) = delete;

  // eventfd_signal: adds 1 to the counter, waking pollers.
  void signal() noexcept;
  // Whether two references name the same eventfd (one open file description).
  bool same(const EventFdRef& other) const noexcept { return ino_ == other.ino_; }

 private:
  EventFdRef(int fd, std::uint64_t ino) noexcept : fd_(fd), ino_(ino) {}
  int fd_;
  std::uint64_t ino_;
};

}  // namespace fastmap::sim
