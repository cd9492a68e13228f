#include "sim/sim_kernel.h"

#include <fcntl.h>

#include <cerrno>

#include "sim/iommufd/device_api.h"
#include "sim/user_memory.h"
#include "sim/vfio/machine.h"
#include "sim/vfio/vfio_device.h"

namespace fastmap::sim {

namespace {
constexpr int kFirstFd = 3;       // 0-2 are stdio in a fresh process
constexpr int kMaxFds = 1 << 20;  // RLIMIT_NOFILE's usual hard limit

thread_local int t_table = 0;  // TaskScope's table for this thread
}  // namespace

void SimKernel::set_thread_table(int table) noexcept { t_table = table; }

SimKernel::TaskScope::TaskScope(int table) noexcept : saved_(t_table) { t_table = table; }
SimKernel::TaskScope::~TaskScope() { t_table = saved_; }

SimKernel::SimKernel(SimConfig config)
    : config_(config), machine_(std::make_unique<vfio::Machine>(*this)) {
  tables_[0];
  register_node("/dev/iommu", [](SimKernel& k, int, int*) { return iommufd_open(k); });
}

SimKernel::~SimKernel() {
  // Drop files newest first, as process exit closes fds: device fds (which unbind) go
  // before the iommufd they are bound to holds its last reference.
  std::map<int, FdTable> tables;
  {
    std::lock_guard<std::mutex> g(fd_mu_);
    tables.swap(tables_);
  }
  for (auto& [id, files] : tables) {
    while (!files.empty()) files.pop_back();
  }
}

void SimKernel::register_node(const std::string& path, NodeOpen open) {
  std::lock_guard<std::mutex> g(fd_mu_);
  nodes_[path] = std::move(open);
}

bool SimKernel::has_node(const std::string& path) const {
  std::lock_guard<std::mutex> g(fd_mu_);
  return nodes_.count(path) != 0;
}

std::vector<std::string> SimKernel::node_names() const {
  std::vector<std::string> out;
  std::lock_guard<std::mutex> g(fd_mu_);
  for (const auto& [path, open] : nodes_) out.push_back(path);
  return out;
}

int SimKernel::node_chardev(const std::string& path, unsigned* major, unsigned* minor) const {
  if (!has_node(path)) return -ENOENT;
  static const std::string kGroup = "/dev/vfio/", kCdev = "/dev/vfio/devices/vfio";
  if (path == "/dev/iommu") {
    *major = 10;
    *minor = kIommufdMinor;
  } else if (path == "/dev/vfio/vfio") {
    *major = 10;
    *minor = 196;  // VFIO_MINOR
  } else if (path.compare(0, kCdev.size(), kCdev) == 0) {
    *major = vfio::kVfioDevMajor;
    *minor = static_cast<unsigned>(std::stoul(path.substr(kCdev.size())));
  } else {
    *major = vfio::kVfioGroupMajor;
    *minor = static_cast<unsigned>(std::stoul(path.substr(kGroup.size())));
  }
  return 1;
}

void SimKernel::unregister_node(const std::string& path) {
  std::lock_guard<std::mutex> g(fd_mu_);
  nodes_.erase(path);
}

void SimKernel::set_fd_allocator(FdAlloc alloc, FdRelease release) {
  std::lock_guard<std::mutex> g(fd_mu_);
  fd_alloc_ = std::move(alloc);
  fd_release_ = std::move(release);
}

SimKernel::FdTable* SimKernel::table_locked() {
  auto it = tables_.find(t_table);
  return it == tables_.end() ? nullptr : &it->second;
}

const SimKernel::FdTable* SimKernel::table_locked() const {
  auto it = tables_.find(t_table);
  return it == tables_.end() ? nullptr : &it->second;
}

int SimKernel::install(std::shared_ptr<File> file) {
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

std::shared_ptr<File> SimKernel::fget(int fd) const {
  std::lock_guard<std::mutex> g(fd_mu_);
  const FdTable* t = table_locked();
  if (!t || fd < 0 || static_cast<std::size_t>(fd) >= t->size()) return nullptr;
  return (*t)[static_cast<std::size_t>(fd)];
}

std::vector<int> SimKernel::fds() const {
  std::vector<int> out;
  std::lock_guard<std::mutex> g(fd_mu_);
  const FdTable* t = table_locked();
  if (!t) return out;
  for (std::size_t i = 0; i < t->size(); ++i) {
    if ((*t)[i]) out.push_back(static_cast<int>(i));
  }
  return out;
}

int SimKernel::open(const char* path, int flags) noexcept {
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

std::shared_ptr<File> SimKernel::drop_locked(FdTable& t, int fd) {
  if (fd < 0 || static_cast<std::size_t>(fd) >= t.size()) return nullptr;
  std::shared_ptr<File> dropped = std::move(t[static_cast<std::size_t>(fd)]);
  while (!t.empty() && !t.back()) t.pop_back();
  return dropped;
}

int SimKernel::close(int fd) noexcept {
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

int SimKernel::dup_to(int oldfd, int newfd) noexcept {
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

int SimKernel::clone_table(int from) {
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

int SimKernel::drop_table(int table) {
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

long SimKernel::ioctl(int fd, unsigned long request, void* arg) noexcept {
  auto file = fget(fd);
  if (!file) return -EBADF;
  return file->ioctl(request, arg);
}

ssize_t SimKernel::pread(int fd, void* buf, std::size_t count, std::uint64_t offset) noexcept {
  auto file = fget(fd);
  if (!file) return -EBADF;
  return file->pread(buf, count, offset);
}

ssize_t SimKernel::pwrite(int fd, const void* buf, std::size_t count,
                          std::uint64_t offset) noexcept {
  auto file = fget(fd);
  if (!file) return -EBADF;
  return file->pwrite(buf, count, offset);
}

ssize_t SimKernel::read(int fd, void* buf, std::size_t count) noexcept {
  auto file = fget(fd);
  if (!file) return -EBADF;
  return file->read(buf, count);
}

ssize_t SimKernel::write(int fd, const void* buf, std::size_t count) noexcept {
  auto file = fget(fd);
  if (!file) return -EBADF;
  return file->write(buf, count);
}

int SimKernel::mmap(int fd, void* addr, std::size_t length, int prot, int flags,
                    std::uint64_t offset, void** out) noexcept {
  auto file = fget(fd);
  if (!file) return -EBADF;
  return file->mmap(addr, length, prot, flags, offset, out);
}

int SimKernel::chardev(int fd, unsigned* major, unsigned* minor) const noexcept {
  auto file = fget(fd);
  if (!file) return -EBADF;
  return file->chardev(major, minor) ? 1 : 0;
}

void SimKernel::add_page_pins(std::uint64_t va, std::uint64_t npages, int delta) {
  const std::uint64_t ps = host_page_size();
  std::lock_guard<std::mutex> g(pins_mu_);
  for (std::uint64_t i = 0; i < npages; ++i, va += ps) {
    unsigned& n = page_pins_[va];
    n += static_cast<unsigned>(delta);
    if (n == 0) page_pins_.erase(va);
  }
}

unsigned SimKernel::page_pins(std::uint64_t va) const {
  std::lock_guard<std::mutex> g(pins_mu_);
  auto it = page_pins_.find(va);
  return it == page_pins_.end() ? 0 : it->second;
}

}  // namespace fastmap::sim
