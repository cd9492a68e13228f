#include "sim/core/kernel_core.h"

#include <fcntl.h>
#include <sys/mman.h>

#include <cerrno>

#include "sim/core/fork_gate.h"

namespace fastmap::sim {

namespace {
constexpr int kFirstFd = 3;       // 0-2 are stdio in a fresh process
constexpr int kMaxFds = 1 << 20;  // RLIMIT_NOFILE's usual hard limit

thread_local int t_table = 0;  // TaskScope's table for this thread
}  // namespace

void KernelCore::set_thread_table(int table) noexcept { t_table = table; }

KernelCore::TaskScope::TaskScope(int table) noexcept : saved_(t_table) { t_table = table; }
KernelCore::TaskScope::~TaskScope() { t_table = saved_; }

KernelCore::KernelCore(SimConfig config) : config_(config) { tables_[0]; }

KernelCore::~KernelCore() { close_all(); }

void KernelCore::close_all() noexcept {
  // Drop files newest first, as process exit closes fds: device fds (which unbind) go
  // before the iommufd they are bound to holds its last reference.
  std::map<int, FdTable> tables;
  {
    std::lock_guard<std::mutex> g(fd_mu_);
    tables.swap(tables_);
    tables_[0];
  }
  for (auto& [id, files] : tables) {
    while (!files.empty()) files.pop_back();
  }
}

void KernelCore::register_node(const std::string& path, NodeOpen open) {
  std::lock_guard<std::mutex> g(fd_mu_);
  nodes_[path] = std::move(open);
}

bool KernelCore::has_node(const std::string& path) const {
  std::lock_guard<std::mutex> g(fd_mu_);
  return nodes_.count(path) != 0;
}

std::vector<std::string> KernelCore::node_names() const {
  std::vector<std::string> out;
  std::lock_guard<std::mutex> g(fd_mu_);
  for (const auto& [path, open] : nodes_) out.push_back(path);
  return out;
}

void KernelCore::unregister_node(const std::string& path) {
  std::lock_guard<std::mutex> g(fd_mu_);
  nodes_.erase(path);
}

void KernelCore::set_fd_allocator(FdAlloc alloc, FdRelease release) {
  std::lock_guard<std::mutex> g(fd_mu_);
  fd_alloc_ = std::move(alloc);
  fd_release_ = std::move(release);
}

KernelCore::FdTable* KernelCore::table_locked() {
  auto it = tables_.find(t_table);
  return it == tables_.end() ? nullptr : &it->second;
}

const KernelCore::FdTable* KernelCore::table_locked() const {
  auto it = tables_.find(t_table);
  return it == tables_.end() ? nullptr : &it->second;
}

int KernelCore::install(std::shared_ptr<File> file) {
  std::lock_guard<std::mutex> g(fd_mu_);
  FdTable* t = table_locked();
  if (!t) return -EBADF;
  if (fd_alloc_) {
    const int fd = fd_alloc_();
    if (fd < 0) return fd;
    try {
      if (static_cast<std::size_t>(fd) >= t->size()) t->resize(static_cast<std::size_t>(fd) + 1);
    } catch (const std::bad_alloc&) {
      if (fd_release_) fd_release_(fd);
      return -ENOMEM;
    }
    (*t)[static_cast<std::size_t>(fd)] = std::move(file);
    return fd;
  }
  for (std::size_t i = kFirstFd; i < t->size(); ++i) {
    if (!(*t)[i]) {
      (*t)[i] = std::move(file);
      return static_cast<int>(i);
    }
  }
  if (t->size() >= kMaxFds) return -EMFILE;
  if (t->size() < kFirstFd) t->resize(kFirstFd);
  t->push_back(std::move(file));
  return static_cast<int>(t->size() - 1);
}

std::shared_ptr<File> KernelCore::fget(int fd) const {
  std::lock_guard<std::mutex> g(fd_mu_);
  const FdTable* t = table_locked();
  if (!t || fd < 0 || static_cast<std::size_t>(fd) >= t->size()) return nullptr;
  return (*t)[static_cast<std::size_t>(fd)];
}

std::vector<int> KernelCore::fds() const {
  std::vector<int> out;
  std::lock_guard<std::mutex> g(fd_mu_);
  const FdTable* t = table_locked();
  if (!t) return out;
  for (std::size_t i = 0; i < t->size(); ++i) {
    if ((*t)[i]) out.push_back(static_cast<int>(i));
  }
  return out;
}

int KernelCore::open(const char* path, int flags) noexcept {
  SimEntry entry;
  if (path == nullptr) return -EFAULT;
  NodeOpen opener;
  {
    std::lock_guard<std::mutex> g(fd_mu_);
    auto it = nodes_.find(path);
    if (it == nodes_.end()) return -ENOENT;
    opener = it->second;
  }
  // Any access mode opens (the process is root, and neither iommufd nor vfio checks
  // f_mode at open); read, write and mmap check it as the VFS does.
  int err = 0;
  std::shared_ptr<File> file;
  try {
    file = opener(*this, flags, &err);
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
  if (!file) return err ? err : -ENODEV;
  file->set_access_mode(flags & O_ACCMODE);
  return install(std::move(file));
}

std::shared_ptr<File> KernelCore::drop_locked(FdTable& t, int fd) {
  if (fd < 0 || static_cast<std::size_t>(fd) >= t.size()) return nullptr;
  std::shared_ptr<File> dropped = std::move(t[static_cast<std::size_t>(fd)]);
  while (!t.empty() && !t.back()) t.pop_back();
  return dropped;
}

int KernelCore::close(int fd) noexcept {
  SimEntry entry;
  std::shared_ptr<File> dropped;  // released outside the lock: release may re-enter
  {
    std::lock_guard<std::mutex> g(fd_mu_);
    FdTable* t = table_locked();
    if (!t) return -EBADF;
    dropped = drop_locked(*t, fd);
    if (!dropped) return -EBADF;
  }
  return 0;
}

int KernelCore::dup_to(int oldfd, int newfd) noexcept {
  SimEntry entry;
  std::shared_ptr<File> dropped;
  {
    std::lock_guard<std::mutex> g(fd_mu_);
    FdTable* t = table_locked();
    if (!t || oldfd < 0 || static_cast<std::size_t>(oldfd) >= t->size() ||
        !(*t)[static_cast<std::size_t>(oldfd)] || newfd < 0 || newfd >= kMaxFds) {
      return -EBADF;
    }
    if (oldfd == newfd) return newfd;
    try {
      if (static_cast<std::size_t>(newfd) >= t->size()) t->resize(static_cast<std::size_t>(newfd) + 1);
    } catch (const std::bad_alloc&) {
      return -ENOMEM;
    }
    dropped = std::move((*t)[static_cast<std::size_t>(newfd)]);
    (*t)[static_cast<std::size_t>(newfd)] = (*t)[static_cast<std::size_t>(oldfd)];
  }
  return newfd;
}

int KernelCore::clone_table(int from) {
  std::lock_guard<std::mutex> g(fd_mu_);
  auto it = tables_.find(from);
  if (it == tables_.end()) return -EBADF;
  try {
    const int id = next_table_++;
    tables_.emplace(id, it->second);
    return id;
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
}

int KernelCore::drop_table(int table) {
  SimEntry entry;
  FdTable files;
  {
    std::lock_guard<std::mutex> g(fd_mu_);
    auto it = tables_.find(table);
    if (it == tables_.end()) return -EBADF;
    files.swap(it->second);
    if (table != 0) tables_.erase(it);
  }
  while (!files.empty()) files.pop_back();  // newest first, as at exit
  return 0;
}

long KernelCore::ioctl(int fd, unsigned long request, void* arg) noexcept {
  SimEntry entry;
  auto file = fget(fd);
  if (!file) return -EBADF;
  return file->ioctl(request, arg);
}

ssize_t KernelCore::pread(int fd, void* buf, std::size_t count, std::uint64_t offset) noexcept {
  SimEntry entry;
  auto file = fget(fd);
  if (!file || !file->readable()) return -EBADF;
  return file->pread(buf, count, offset);
}

ssize_t KernelCore::pwrite(int fd, const void* buf, std::size_t count,
                          std::uint64_t offset) noexcept {
  SimEntry entry;
  auto file = fget(fd);
  if (!file || !file->writable()) return -EBADF;
  return file->pwrite(buf, count, offset);
}

ssize_t KernelCore::read(int fd, void* buf, std::size_t count) noexcept {
  SimEntry entry;
  auto file = fget(fd);
  if (!file || !file->readable()) return -EBADF;
  return file->read(buf, count);
}

ssize_t KernelCore::write(int fd, const void* buf, std::size_t count) noexcept {
  SimEntry entry;
  auto file = fget(fd);
  if (!file || !file->writable()) return -EBADF;
  return file->write(buf, count);
}

long KernelCore::mmap_anywhere(int fd, std::size_t length, int prot, int flags,
                               std::uint64_t offset) noexcept {
  void* out = nullptr;
  const int rc = mmap(fd, nullptr, length, prot, flags, offset, &out);
  return rc < 0 ? rc : static_cast<long>(reinterpret_cast<std::uintptr_t>(out));
}

int KernelCore::mmap(int fd, void* addr, std::size_t length, int prot, int flags,
                    std::uint64_t offset, void** out) noexcept {
  SimEntry entry;
  auto file = fget(fd);
  if (!file) return -EBADF;
  // do_mmap: any mapping needs a readable file, a shared writable one a writable file.
  if (!file->readable()) return -EACCES;
  if ((flags & MAP_TYPE) != MAP_PRIVATE && (prot & PROT_WRITE) && !file->writable()) {
    return -EACCES;
  }
  return file->mmap(addr, length, prot, flags, offset, out);
}

int KernelCore::chardev(int fd, unsigned* major, unsigned* minor) const noexcept {
  auto file = fget(fd);
  if (!file) return -EBADF;
  return file->chardev(major, minor) ? 1 : 0;
}

}  // namespace fastmap::sim
