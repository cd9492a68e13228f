// The path calls, for simulated paths: the device nodes (/dev/iommu, /dev/vfio/...) and the
// VFIO part of sysfs. Paths must be absolute (or relative to AT_FDCWD while absolute);
// everything else goes to the host untouched. sysfs files open as sealed-in-memory copies
// of their content (a memfd), so stdio and plain read() work on them.
#include <dirent.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/sysmacros.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "preload/fail_nth.h"
#include "preload/preload.h"
#include "preload/real.h"
#include "preload/stat_fill.h"

using namespace fastmap::preload;

namespace {

constexpr int kNotOurs = 1;  // a positive "answer": the host handles the call

bool ours(const char* path) { return is_sim_dev(path) || is_sim_sysfs(path); }

std::string sys_string(Op op, const char* path, long* rc) {
  static thread_local char buf[1 << 16];
  *rc = sim_call(Call{op, -1, 0, 0, 0, 0, path}, buf, sizeof buf).ret;
  if (*rc < 0) return {};
  return std::string(buf, static_cast<std::size_t>(*rc) < sizeof buf ? static_cast<std::size_t>(*rc)
                                                                      : sizeof buf);
}

std::vector<std::string> split_nul(const std::string& s) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t end = s.find('\0', i);
    out.push_back(s.substr(i, end - i));
    i = end == std::string::npos ? s.size() : end + 1;
  }
  return out;
}

// Names directly below a /dev directory, from the simulator's device nodes.
int dev_dir_list(const char* path, std::vector<std::string>* out) {
  long rc = 0;
  const std::string prefix = std::string(path) + "/";
  std::set<std::string> names;
  for (const auto& node : split_nul(sys_string(Op::kNodeList, path, &rc))) {
    if (node.compare(0, prefix.size(), prefix) != 0) continue;
    names.insert(node.substr(prefix.size(), node.find('/', prefix.size()) - prefix.size()));
  }
  if (names.empty()) return -ENOENT;
  out->assign(names.begin(), names.end());
  return 0;
}

int sysfs_open(const char* path, int flags) {
  long rc = 0;
  const std::string content = sys_string(Op::kSysRead, path, &rc);
  if (rc < 0) return static_cast<int>(rc);
  if ((flags & O_ACCMODE) != O_RDONLY) return -EACCES;  // the attributes are 0444
  const int fd = ::memfd_create("fastmap-sysfs", (flags & O_CLOEXEC) ? MFD_CLOEXEC : 0);
  if (fd < 0) return -errno;
  auto real_write = FASTMAP_REAL("write", ssize_t (*)(int, const void*, size_t));
  if (real_write(fd, content.data(), content.size()) != static_cast<ssize_t>(content.size()) ||
      FASTMAP_REAL("lseek", off_t (*)(int, off_t, int))(fd, 0, SEEK_SET) != 0) {
    FASTMAP_REAL("close", int (*)(int))(fd);
    return -EIO;
  }
  return fd;
}

// open(2) of a simulated path: an fd, -errno, or kNotOurs.
int sim_open(const char* path, int flags) {
  if (!path || !ours(path)) return kNotOurs;
  if (is_sim_sysfs(path)) return sysfs_open(path, flags);
  Result r = sim_call(Call{Op::kOpen, -1, static_cast<std::uint64_t>(flags), 0, 0, 0, path});
  if (r.ret >= 0) set_simfd_cloexec(static_cast<int>(r.ret), flags & O_CLOEXEC);
  if (r.ret == -ENOENT) {
    std::vector<std::string> names;
    if (dev_dir_list(path, &names) == 0) return -EISDIR;
  }
  return static_cast<int>(r.ret);
}

int open_common(const char* path, int flags, mode_t mode, const char* real_name, int dirfd) {
  const bool absolute = path && path[0] == '/';
  int r = absolute ? failnth_open(path, flags) : kNotOurs;
  if (r == kNotOurs && (dirfd == AT_FDCWD || absolute)) r = sim_open(path, flags);
  if (r != kNotOurs) return static_cast<int>(set_errno(r));
  std::string debugfs;
  if (absolute && debugfs_path(path, &debugfs)) path = debugfs.c_str();
  if (dirfd == -1) return FASTMAP_REAL(real_name, int (*)(const char*, int, ...))(path, flags, mode);
  return FASTMAP_REAL(real_name, int (*)(int, const char*, int, ...))(dirfd, path, flags, mode);
}

mode_t va_mode(int flags, va_list ap) {
  return (flags & (O_CREAT | O_TMPFILE)) ? static_cast<mode_t>(va_arg(ap, int)) : 0;
}

int stat_common(const char* path, struct stat* st, bool follow) {
  return static_cast<int>(set_errno(sim_path_stat(path, follow, st)));
}

struct SimDir {
  std::vector<std::string> names;
  std::size_t pos = 0;
  struct dirent ent;
  struct dirent64 ent64;
};
std::mutex g_dirs_mu;
std::set<void*> g_dirs;

SimDir* sim_dir(DIR* d) {
  std::lock_guard<std::mutex> g(g_dirs_mu);
  return g_dirs.count(d) ? reinterpret_cast<SimDir*>(d) : nullptr;
}

template <class Ent>
Ent* next_entry(SimDir* d, Ent* e) {
  if (d->pos >= d->names.size()) return nullptr;
  const std::string& name = d->names[d->pos++];
  std::memset(e, 0, sizeof *e);
  e->d_ino = d->pos;
  e->d_off = static_cast<decltype(e->d_off)>(d->pos);
  e->d_reclen = sizeof *e;
  e->d_type = DT_UNKNOWN;
  std::strncpy(e->d_name, name.c_str(), sizeof e->d_name - 1);
  return e;
}

}  // namespace

// The interposed entry points are this library's exported interface.
#pragma GCC visibility push(default)
extern "C" {

int open(const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = va_mode(flags, ap);
  va_end(ap);
  return open_common(path, flags, mode, "open", -1);
}
int open64(const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = va_mode(flags, ap);
  va_end(ap);
  return open_common(path, flags, mode, "open64", -1);
}
int openat(int dirfd, const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = va_mode(flags, ap);
  va_end(ap);
  return open_common(path, flags, mode, "openat", dirfd);
}
int openat64(int dirfd, const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = va_mode(flags, ap);
  va_end(ap);
  return open_common(path, flags, mode, "openat64", dirfd);
}
int __open_2(const char* path, int flags) { return open_common(path, flags, 0, "open", -1); }
int __open64_2(const char* path, int flags) { return open_common(path, flags, 0, "open64", -1); }
int __openat_2(int dirfd, const char* path, int flags) {
  return open_common(path, flags, 0, "openat", dirfd);
}
int __openat64_2(int dirfd, const char* path, int flags) {
  return open_common(path, flags, 0, "openat64", dirfd);
}

FILE* fopen(const char* path, const char* mode) {
  if (ours(path)) {
    int flags = O_RDONLY;
    if (mode[0] == 'w' || mode[0] == 'a' || std::strchr(mode, '+')) flags = O_RDWR;
    if (std::strchr(mode, 'e')) flags |= O_CLOEXEC;
    const int fd = sim_open(path, flags);
    if (fd < 0) {
      set_errno(fd);
      return nullptr;
    }
    return ::fdopen(fd, mode);
  }
  return FASTMAP_REAL("fopen", FILE* (*)(const char*, const char*))(path, mode);
}
FILE* fopen64(const char* path, const char* mode) {
  if (ours(path)) return fopen(path, mode);
  return FASTMAP_REAL("fopen64", FILE* (*)(const char*, const char*))(path, mode);
}

int stat(const char* path, struct stat* st) noexcept {
  if (ours(path)) return stat_common(path, st, true);
  return FASTMAP_REAL("stat", int (*)(const char*, struct stat*))(path, st);
}
int lstat(const char* path, struct stat* st) noexcept {
  if (ours(path)) return stat_common(path, st, false);
  return FASTMAP_REAL("lstat", int (*)(const char*, struct stat*))(path, st);
}
int stat64(const char* path, struct stat64* st) noexcept {
  return stat(path, reinterpret_cast<struct stat*>(st));
}
int lstat64(const char* path, struct stat64* st) noexcept {
  return lstat(path, reinterpret_cast<struct stat*>(st));
}
int __xstat(int, const char* path, struct stat* st) { return stat(path, st); }
int __xstat64(int, const char* path, struct stat64* st) { return stat64(path, st); }
int __lxstat(int, const char* path, struct stat* st) { return lstat(path, st); }
int __lxstat64(int, const char* path, struct stat64* st) { return lstat64(path, st); }

int fstatat(int dirfd, const char* path, struct stat* st, int flags) noexcept {
  if ((flags & AT_EMPTY_PATH) && path[0] == '\0' && is_simfd(dirfd)) {
    return fstat(dirfd, st);
  }
  if (ours(path)) {
    return stat_common(path, st, !(flags & AT_SYMLINK_NOFOLLOW));
  }
  return FASTMAP_REAL("fstatat", int (*)(int, const char*, struct stat*, int))(dirfd, path, st,
                                                                                 flags);
}
int fstatat64(int dirfd, const char* path, struct stat64* st, int flags) noexcept {
  return fstatat(dirfd, path, reinterpret_cast<struct stat*>(st), flags);
}
int __fxstatat(int, int dirfd, const char* path, struct stat* st, int flags) {
  return fstatat(dirfd, path, st, flags);
}
int __fxstatat64(int, int dirfd, const char* path, struct stat64* st, int flags) {
  return fstatat64(dirfd, path, st, flags);
}

int statx(int dirfd, const char* path, int flags, unsigned mask, struct statx* sx) noexcept {
  const bool by_fd = (flags & AT_EMPTY_PATH) && path[0] == '\0' && is_simfd(dirfd);
  const bool by_path = ours(path);
  if (!by_fd && !by_path) {
    return FASTMAP_REAL("statx", int (*)(int, const char*, int, unsigned, struct statx*))(
        dirfd, path, flags, mask, sx);
  }
  struct stat st;
  const int rc = by_fd ? (fstat(dirfd, &st) == 0 ? 0 : -errno)
                       : sim_path_stat(path, !(flags & AT_SYMLINK_NOFOLLOW), &st);
  if (rc) return static_cast<int>(set_errno(rc));
  std::memset(sx, 0, sizeof *sx);
  sx->stx_mask = STATX_BASIC_STATS;
  sx->stx_mode = static_cast<std::uint16_t>(st.st_mode);
  sx->stx_nlink = static_cast<std::uint32_t>(st.st_nlink);
  sx->stx_size = static_cast<std::uint64_t>(st.st_size);
  sx->stx_blksize = static_cast<std::uint32_t>(st.st_blksize);
  sx->stx_ino = st.st_ino;
  sx->stx_rdev_major = major(st.st_rdev);
  sx->stx_rdev_minor = minor(st.st_rdev);
  sx->stx_dev_major = major(st.st_dev);
  sx->stx_dev_minor = minor(st.st_dev);
  return 0;
}

int access(const char* path, int mode) noexcept {
  if (ours(path)) {
    struct stat st;
    if (int rc = sim_path_stat(path, true, &st)) return static_cast<int>(set_errno(rc));
    if ((mode & W_OK) && S_ISREG(st.st_mode)) return static_cast<int>(set_errno(-EACCES));
    return 0;
  }
  return FASTMAP_REAL("access", int (*)(const char*, int))(path, mode);
}
int faccessat(int dirfd, const char* path, int mode, int flags) noexcept {
  if (ours(path)) return access(path, mode);
  return FASTMAP_REAL("faccessat", int (*)(int, const char*, int, int))(dirfd, path, mode, flags);
}

ssize_t readlink(const char* __restrict path, char* __restrict buf, size_t size) noexcept {
  if (ours(path)) {
    if (is_sim_dev(path)) {
      struct stat st;
      const int rc = sim_path_stat(path, false, &st);
      return set_errno(rc ? rc : -EINVAL);
    }
    long rc = 0;
    const std::string target = sys_string(Op::kSysReadlink, path, &rc);
    if (rc < 0) return set_errno(rc);
    const std::size_t n = target.size() < size ? target.size() : size;
    std::memcpy(buf, target.data(), n);
    return static_cast<ssize_t>(n);
  }
  return FASTMAP_REAL("readlink", ssize_t (*)(const char*, char*, size_t))(path, buf, size);
}
ssize_t readlinkat(int dirfd, const char* __restrict path, char* __restrict buf,
                   size_t size) noexcept {
  if (ours(path)) return readlink(path, buf, size);
  return FASTMAP_REAL("readlinkat", ssize_t (*)(int, const char*, char*, size_t))(dirfd, path, buf,
                                                                                  size);
}

char* realpath(const char* __restrict path, char* __restrict resolved) noexcept {
  if (ours(path)) {
    std::string canon;
    if (is_sim_dev(path)) {
      struct stat st;
      if (int rc = sim_path_stat(path, true, &st)) {
        set_errno(rc);
        return nullptr;
      }
      canon = path;
    } else {
      long rc = 0;
      canon = sys_string(Op::kSysRealpath, path, &rc);
      if (rc < 0) {
        set_errno(rc);
        return nullptr;
      }
    }
    if (canon.size() >= PATH_MAX) {
      set_errno(-ENAMETOOLONG);
      return nullptr;
    }
    char* out = resolved ? resolved : static_cast<char*>(std::malloc(PATH_MAX));
    if (!out) return nullptr;
    std::memcpy(out, canon.c_str(), canon.size() + 1);
    return out;
  }
  return FASTMAP_REAL("realpath", char* (*)(const char*, char*))(path, resolved);
}
char* canonicalize_file_name(const char* path) noexcept { return realpath(path, nullptr); }

DIR* opendir(const char* path) {
  std::string debugfs;
  if (debugfs_path(path, &debugfs)) {
    return FASTMAP_REAL("opendir", DIR* (*)(const char*))(debugfs.c_str());
  }
  if (!ours(path)) return FASTMAP_REAL("opendir", DIR* (*)(const char*))(path);
  auto* d = new (std::nothrow) SimDir;
  if (!d) {
    set_errno(-ENOMEM);
    return nullptr;
  }
  d->names = {".", ".."};
  std::vector<std::string> names;
  int rc = 0;
  if (is_sim_dev(path)) {
    rc = dev_dir_list(path, &names);
    if (rc) {
      struct stat st;
      if (sim_path_stat(path, true, &st) == 0) rc = -ENOTDIR;
    }
  } else {
    long lrc = 0;
    names = split_nul(sys_string(Op::kSysList, path, &lrc));
    rc = static_cast<int>(lrc < 0 ? lrc : 0);
  }
  if (rc) {
    delete d;
    set_errno(rc);
    return nullptr;
  }
  d->names.insert(d->names.end(), names.begin(), names.end());
  std::lock_guard<std::mutex> g(g_dirs_mu);
  g_dirs.insert(d);
  return reinterpret_cast<DIR*>(d);
}

struct dirent* readdir(DIR* dir) {
  if (SimDir* d = sim_dir(dir)) return next_entry(d, &d->ent);
  return FASTMAP_REAL("readdir", struct dirent* (*)(DIR*))(dir);
}
struct dirent64* readdir64(DIR* dir) {
  if (SimDir* d = sim_dir(dir)) return next_entry(d, &d->ent64);
  return FASTMAP_REAL("readdir64", struct dirent64* (*)(DIR*))(dir);
}
void rewinddir(DIR* dir) noexcept {
  if (SimDir* d = sim_dir(dir)) {
    d->pos = 0;
    return;
  }
  FASTMAP_REAL("rewinddir", void (*)(DIR*))(dir);
}
int dirfd(DIR* dir) noexcept {
  if (sim_dir(dir)) return static_cast<int>(set_errno(-ENOTSUP));
  return FASTMAP_REAL("dirfd", int (*)(DIR*))(dir);
}
int closedir(DIR* dir) {
  if (SimDir* d = sim_dir(dir)) {
    {
      std::lock_guard<std::mutex> g(g_dirs_mu);
      g_dirs.erase(dir);
    }
    delete d;
    return 0;
  }
  return FASTMAP_REAL("closedir", int (*)(DIR*))(dir);
}

}  // extern "C"
#pragma GCC visibility pop
