#include "sim/core/kernel_core.h"

#include <fcntl.h>

#include <cerrno>

namespace fastmap::sim {

namespace {
constexpr int kFirstFd = 3;       // 0-2 are stdio in a fresh process
constexpr int kMaxFds = 1 << 20;  // RLIMIT_NOFILE's usual hard limit
}  // namespace

KernelCore::KernelCore(SimConfig config) : config_(config) {}

KernelCore::~KernelCore() { close_all(); }

void KernelCore::close_all() noexcept {
  // Drop files newest first, as process exit closes fds: device fds (which unbind) go
  // before the iommufd they are bound to holds its last reference.
  std::vector<std::shared_ptr<File>> files;
  {
    std::lock_guard<std::mutex> g(fd_mu_);
    files.swap(fds_);
  }
  while (!files.empty()) files.pop_back();
}

void KernelCore::register_node(const std::string& path, NodeOpen open) {
  std::lock_guard<std::mutex> g(fd_mu_);
  nodes_[path] = std::move(open);
}

void KernelCore::unregister_node(const std::string& path) {
  std::lock_guard<std::mutex> g(fd_mu_);
  nodes_.erase(path);
}

int KernelCore::install(std::shared_ptr<File> file) {
  std::lock_guard<std::mutex> g(fd_mu_);
  for (std::size_t i = 0; i < fds_.size(); ++i) {
    if (!fds_[i]) {
      fds_[i] = std::move(file);
      return static_cast<int>(i) + kFirstFd;
    }
  }
  if (fds_.size() >= kMaxFds) return -EMFILE;
  fds_.push_back(std::move(file));
  return static_cast<int>(fds_.size() - 1) + kFirstFd;
}

std::shared_ptr<File> KernelCore::fget(int fd) const {
  std::lock_guard<std::mutex> g(fd_mu_);
  if (fd < kFirstFd || static_cast<std::size_t>(fd - kFirstFd) >= fds_.size()) return nullptr;
  return fds_[static_cast<std::size_t>(fd - kFirstFd)];
}

int KernelCore::open(const char* path, int flags) noexcept {
  if (path == nullptr) return -EFAULT;
  NodeOpen opener;
  {
    std::lock_guard<std::mutex> g(fd_mu_);
    auto it = nodes_.find(path);
    if (it == nodes_.end()) return -ENOENT;
    opener = it->second;
  }
  if ((flags & O_ACCMODE) != O_RDWR) return -EACCES;  // every node here wants O_RDWR
  int err = 0;
  std::shared_ptr<File> file;
  try {
    file = opener(*this, flags, &err);
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
  if (!file) return err ? err : -ENODEV;
  return install(std::move(file));
}

int KernelCore::close(int fd) noexcept {
  std::shared_ptr<File> dropped;  // released outside the lock: release may re-enter
  {
    std::lock_guard<std::mutex> g(fd_mu_);
    if (fd < kFirstFd || static_cast<std::size_t>(fd - kFirstFd) >= fds_.size() ||
        !fds_[static_cast<std::size_t>(fd - kFirstFd)]) {
      return -EBADF;
    }
    dropped = std::move(fds_[static_cast<std::size_t>(fd - kFirstFd)]);
    while (!fds_.empty() && !fds_.back()) fds_.pop_back();
  }
  return 0;
}

long KernelCore::ioctl(int fd, unsigned long request, void* arg) noexcept {
  auto file = fget(fd);
  if (!file) return -EBADF;
  return file->ioctl(request, arg);
}

ssize_t KernelCore::pread(int fd, void* buf, std::size_t count, std::uint64_t offset) noexcept {
  auto file = fget(fd);
  if (!file) return -EBADF;
  return file->pread(buf, count, offset);
}

ssize_t KernelCore::pwrite(int fd, const void* buf, std::size_t count,
                          std::uint64_t offset) noexcept {
  auto file = fget(fd);
  if (!file) return -EBADF;
  return file->pwrite(buf, count, offset);
}

}  // namespace fastmap::sim
