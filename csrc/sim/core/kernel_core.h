// The core of the embedded simulated kernel: what every subsystem (iommufd, VFIO) needs
// from "the kernel" and nothing that names a subsystem.
//
// It keeps a table of device nodes (path -> a factory that opens a File, like a char
// device's open()), the process's table of open files, its pinned-memory accounting and the
// modelled configuration. fds are numbered in the simulator's own namespace (lowest free
// from 3, like a fresh process) unless an fd allocator is set: then every new file takes
// the number the allocator hands out (sim-run reserves a real fd per simulated file, so the
// numbers are the program's own). Each simulated process has its own fd table, all sharing
// the open files, as fork() shares them; the calling thread's table is picked with
// TaskScope. Thread-safe.
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
  // read(2)/write(2)/mmap(2) on a simulated file: see File.
  ssize_t read(int fd, void* buf, std::size_t count) noexcept;
  ssize_t write(int fd, const void* buf, std::size_t count) noexcept;
  int mmap(int fd, void* addr, std::size_t length, int prot, int flags, std::uint64_t offset,
           void** out) noexcept;
  // mmap at an address the kernel picks: the address, or -errno.
  long mmap_anywhere(int fd, std::size_t length, int prot, int flags,
                     std::uint64_t offset) noexcept;
  // fstat(2)'s st_rdev of the file's char device: 1 with (major, minor), 0 when the file is
  // not a char device (an anonymous inode), or -EBADF.
  int chardev(int fd, unsigned* major, unsigned* minor) const noexcept;
  // dup2(2) within the current table: newfd refers to oldfd's file (closing what newfd had).
  // newfd or -EBADF. dup2 to itself is a no-op, as in the kernel.
  int dup_to(int oldfd, int newfd) noexcept;

  // Where new fds come from when set: a function returning a free fd number (or -errno),
  // and one giving a number back when the install fails. nullptr: the internal numbering.
  using FdAlloc = std::function<int()>;
  using FdRelease = std::function<void(int)>;
  void set_fd_allocator(FdAlloc alloc, FdRelease release);

  // Per-process fd tables. Table 0 exists from construction. clone_table copies a table
  // (fork: the files are shared, not duplicated) into a new id returned; drop_table closes
  // every fd of a table (process exit or exec). -errno on a bad id.
  int clone_table(int from);
  int drop_table(int table);
  // The table the calling thread works on: outright, or for a scope's lifetime.
  static void set_thread_table(int table) noexcept;
  class TaskScope {
   public:
    explicit TaskScope(int table) noexcept;
    ~TaskScope();
    TaskScope(const TaskScope&) = delete;
    TaskScope& operator=(const TaskScope&) = delete;

   private:
    int saved_;
  };

  const SimConfig& config() const noexcept { return config_; }

  // A char-device open(): a new File, or -errno through `*err`.
  using NodeOpen = std::function<std::shared_ptr<File>(KernelCore&, int flags, int* err)>;
  void register_node(const std::string& path, NodeOpen open);
  void unregister_node(const std::string& path);
  bool has_node(const std::string& path) const;
  // The device nodes registered, sorted.
  std::vector<std::string> node_names() const;

  // fget(): the file behind an fd, for calls that take another fd as an argument
  // (BIND_IOMMUFD's iommufd, GROUP_SET_CONTAINER, MAP_FILE). nullptr for a bad fd.
  std::shared_ptr<File> fget(int fd) const;
  // Every fd of the current table that refers to a simulated file.
  std::vector<int> fds() const;
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
  using FdTable = std::vector<std::shared_ptr<File>>;  // indexed by fd
  FdTable* table_locked();                             // the current table; fd_mu_ held
  const FdTable* table_locked() const;
  static std::shared_ptr<File> drop_locked(FdTable& t, int fd);

  mutable std::mutex fd_mu_;  // guards nodes_, tables_, next_table_ and the allocator
  std::map<std::string, NodeOpen> nodes_;
  std::map<int, FdTable> tables_;
  int next_table_ = 1;
  FdAlloc fd_alloc_;
  FdRelease fd_release_;
};

}  // namespace fastmap::sim
