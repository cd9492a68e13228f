// fstat(fd).st_rdev for the simulated files userspace checks to be char devices (VFIO cdevs).
#pragma once

#include <optional>
#include <utility>

#include "sim/sim_kernel.h"

namespace fastmap::sim {

// *out = (major, minor) of the char device behind fd, or nullopt for any other file;
// 0, or -EBADF for a closed fd.
int chardev_of(const SimKernel& k, int fd, std::optional<std::pair<unsigned, unsigned>>* out);

}  // namespace fastmap::sim
