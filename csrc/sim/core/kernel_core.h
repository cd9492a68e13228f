// The core of the embedded simulated kernel: what every subsystem (iommufd, VFIO) needs
// from "the kernel" and nothing that names a subsystem.
//
// It keeps a table of device nodes (path -> a factory that opens a File, like a char
// device's open()), the process's table of open files, its pinned-memory accounting and the
// modelled configuration. fds are numbered in the simulator's own namespace (lowest free
// from 3, like a fresh process) and mean nothing to the real kernel. Thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "seam/kernel.h"
#include "sim/core/config.h"
#include "sim/core/file.h"

namespace fastmap::sim {

class KernelCore : public Kernel {
 public:
  explicit KernelCore(SimConfig config);
  ~KernelCore() override;
  KernelCore(const KernelCore&) = delete;
  KernelCore& operator=(const KernelCore&) = delete;

  int open(const char* path, int flags) noexcept override;
  int close(int fd) noexcept override;
  long ioctl(int fd, unsigned long request, void* arg) noexcept override;
  ssize_t pread(int fd, void* buf, std::size_t count, std::uint64_t offset) noexcept override;
  ssize_t pwrite(int fd, const void* buf, std::size_t count,
                 std::uint64_t offset) noexcept override;
  const char* name() const noexcept override { return "sim"; }

  const SimConfig& config() const noexcept { return config_; }

  // A char-device open(): a new File, or -errno through `*err`.
  using NodeOpen = std::function<std::shared_ptr<File>(KernelCore&, int flags, int* err)>;
  void register_node(const std::string& path, NodeOpen open);
  void unregister_node(const std::string& path);

  // fget(): the file behind an fd, for calls that take another fd as an argument
  // (BIND_IOMMUFD's iommufd, GROUP_SET_CONTAINER, MAP_FILE). nullptr for a bad fd.
  std::shared_ptr<File> fget(int fd) const;
  // Install an already-created file (GROUP_GET_DEVICE_FD returns a new fd): fd or -EMFILE.
  int install(std::shared_ptr<File> file);

  // Pinned-memory accounting of the one simulated process and its user, in pages, checked
  // against config().rlimit_memlock: iommufd charges the user's (default) or the mm's
  // locked_vm (IOMMU_OPTION_RLIMIT_MODE), Type1 the mm's.
  std::atomic<std::uint64_t>& locked_vm(bool per_mm) noexcept {
    return per_mm ? mm_locked_vm_ : user_locked_vm_;
  }

 protected:
  // Process exit: drop every open file, newest first. A derived kernel calls it from its
  // destructor, before the members that files refer to go.
  void close_all() noexcept;

 private:
  std::atomic<std::uint64_t> user_locked_vm_{0};
  std::atomic<std::uint64_t> mm_locked_vm_{0};
  SimConfig config_;
  mutable std::mutex fd_mu_;  // guards nodes_ and fds_
  std::map<std::string, NodeOpen> nodes_;
  std::vector<std::shared_ptr<File>> fds_;
};

}  // namespace fastmap::sim
