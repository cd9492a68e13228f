// What stat(2) shows for simulated files and paths.
#pragma once

#include <sys/stat.h>

namespace fastmap::preload {

// st from the host's fstat of the reserved fd, made the simulated file's: a char device
// with its (major, minor), or an anonymous inode. 0 or -errno.
int patch_fd_stat(int fd, struct stat* st) noexcept;
// stat/lstat of a simulated path (a device node, /dev/vfio[/devices], or sysfs). 0 or -errno.
int sim_path_stat(const char* path, bool follow, struct stat* st) noexcept;

}  // namespace fastmap::preload
