// One ioctl call as the dispatcher hands it to a handler: the kernel copy of the struct
// plus where it came from, so the handler can answer with respond().
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "sim/core/user_memory.h"

namespace fastmap::sim {

class IommufdCtx;

struct Ucmd {
  IommufdCtx& ctx;
  std::uint64_t ubuffer;   // the user's struct
  std::uint32_t user_size; // its first u32
  void* cmd;               // kernel copy, zero-extended to the kernel's size
  std::size_t cmd_size;

  template <class T>
  T& get() noexcept {
    return *static_cast<T*>(cmd);
  }
  // iommufd_ucmd_respond: copy back min(user size, kernel size) bytes. 0 or -EFAULT.
  int respond() const noexcept {
    return copy_to_user(ubuffer, cmd, std::min<std::size_t>(user_size, cmd_size));
  }
};

}  // namespace fastmap::sim
