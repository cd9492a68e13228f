// fork() safety of the simulated kernel.
//
// In a real process the kernel's locks are not in the process's memory, so fork() in one
// thread while another is inside an ioctl is harmless. The simulator's locks are: a mutex
// held by a thread that does not exist in the child stays locked there forever, and the
// child deadlocks on its first call. So every entry into the simulator (a system call on a
// simulated fd, a device's DMA) holds this gate shared, and a pthread_atfork prepare
// handler takes it exclusively: fork() waits until no thread is inside the simulator and
// keeps new entries out until it is done; parent and child then release it. Entries nest
// (an ioctl doing DMA): glibc's default rwlock lets a reader in while a writer waits.
#pragma once

#include <shared_mutex>

namespace fastmap::sim {

class SimEntry {
 public:
  SimEntry();
  SimEntry(const SimEntry&) = delete;
  SimEntry& operator=(const SimEntry&) = delete;

 private:
  std::shared_lock<std::shared_mutex> lock_;
};

}  // namespace fastmap::sim
