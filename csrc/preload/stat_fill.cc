#include "preload/stat_fill.h"

#include <sys/sysmacros.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "preload/preload.h"

namespace fastmap::preload {

namespace {

void fill(struct stat* st, mode_t mode, dev_t rdev, off_t size) {
  std::memset(st, 0, sizeof *st);
  st->st_mode = mode;
  st->st_nlink = S_ISDIR(mode) ? 2 : 1;
  st->st_rdev = rdev;
  st->st_size = size;
  st->st_blksize = 4096;
}

// /dev/vfio and /dev/vfio/devices exist while some node lies below them.
bool is_dev_dir(const char* path) {
  static thread_local char names[1 << 14];
  const long n = sim_call(Call{Op::kNodeList, -1, 0, 0, 0, 0, nullptr}, names, sizeof names).ret;
  if (n <= 0) return false;
  const std::string prefix = std::string(path) + "/";
  for (long i = 0; i < n && i < static_cast<long>(sizeof names);) {
    const char* name = names + i;
    if (std::strncmp(name, prefix.c_str(), prefix.size()) == 0) return true;
    i += static_cast<long>(std::strlen(name)) + 1;
  }
  return false;
}

}  // namespace

int patch_fd_stat(int fd, struct stat* st) noexcept {
  Result r = sim_call(Call{Op::kChardev, fd, 0, 0, 0, 0, nullptr});
  if (r.ret < 0) return static_cast<int>(r.ret);
  if (r.ret == 1) {
    st->st_mode = S_IFCHR | 0600;
    st->st_rdev = makedev(static_cast<unsigned>(r.a), static_cast<unsigned>(r.b));
  } else {
    st->st_mode = 0600;  // an anonymous inode
    st->st_rdev = 0;
  }
  return 0;
}

int sim_path_stat(const char* path, bool follow, struct stat* st) noexcept {
  if (is_sim_dev(path)) {
    Result r = sim_call(Call{Op::kNodeChardev, -1, 0, 0, 0, 0, path});
    if (r.ret == 1) {
      fill(st, S_IFCHR | 0600, makedev(static_cast<unsigned>(r.a), static_cast<unsigned>(r.b)), 0);
      return 0;
    }
    if (is_dev_dir(path)) {
      fill(st, S_IFDIR | 0755, 0, 0);
      return 0;
    }
    return -ENOENT;
  }
  const char* target = path;
  char canon[4096];
  if (follow) {
    long n = sim_call(Call{Op::kSysRealpath, -1, 0, 0, 0, 0, path}, canon, sizeof canon - 1).ret;
    if (n < 0) return static_cast<int>(n);
    canon[n < static_cast<long>(sizeof canon) - 1 ? n : sizeof canon - 1] = '\0';
    target = canon;
  }
  const long type = sim_call(Call{Op::kSysType, -1, 0, 0, 0, 0, target}).ret;
  switch (type) {
    case 0: fill(st, S_IFDIR | 0755, 0, 0); return 0;
    case 1: fill(st, S_IFREG | 0444, 0, 4096); return 0;
    case 2: fill(st, S_IFLNK | 0777, 0, 0); return 0;
    default: return static_cast<int>(type);
  }
}

}  // namespace fastmap::preload
