// The embedded simulated kernel: the other side of the ioctl seam.
//
// It keeps a table of device nodes (path -> a factory that opens a File, like a char
// device's open()) and a table of open files. /dev/iommu is registered at construction; the
// VFIO side registers /dev/vfio/vfio, /dev/vfio/N and /dev/vfio/devices/vfioN as it creates
// devices. fds are numbered in the simulator's own namespace (lowest free from 3, like a
// fresh process) unless an fd allocator is set: then every new file takes the number the
// allocator hands out (sim-run reserves a real fd per simulated file, so the numbers are the
// program's own). Each simulated process has its own fd table, all sharing the open files,
// as fork() shares them; the calling thread's table is picked with TaskScope. Thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "seam/kernel.h"
#include "sim/config.h"
#include "sim/file.h"

namespace fastmap::sim {

namespace vfio {
class Machine;
}

class SimKernel final : public Kernel {
 public:
  explicit SimKernel(SimConfig config = {});
  ~SimKernel() override;

  int open(const char* path, int flags) noexcept override;
  int close(int fd) noexcept override;
  // read(2)/write(2)/mmap(2) on a simulated file: see File.
  ssize_t read(int fd, void* buf, std::size_t count) noexcept;
  ssize_t write(int fd, const void* buf, std::size_t count) noexcept;
  int mmap(int fd, void* addr, std::size_t length, int prot, int flags, std::uint64_t offset,
           void** out) noexcept;
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
  // The table the calling thread works on, for the scope's lifetime.
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
  long ioctl(int fd, unsigned long request, void* arg) noexcept override;
  ssize_t pread(int fd, void* buf, std::size_t count, std::uint64_t offset) noexcept override;
  ssize_t pwrite(int fd, const void* buf, std::size_t count,
                 std::uint64_t offset) noexcept override;
  const char* name() const noexcept override { return "sim"; }

  const SimConfig& config() const noexcept { return config_; }

  // A char-device open(): a new File, or -errno through `*err`.
  using NodeOpen = std::function<std::shared_ptr<File>(SimKernel&, int flags, int* err)>;
  void register_node(const std::string& path, NodeOpen open);
  void unregister_node(const std::string& path);
  bool has_node(const std::string& path) const;
  // The device nodes registered, sorted.
  std::vector<std::string> node_names() const;
  // stat(2) of a node by path: 1 and its char device (major, minor), or -ENOENT.
  int node_chardev(const std::string& path, unsigned* major, unsigned* minor) const;

  // fget(): the file behind an fd, for calls that take another fd as an argument
  // (BIND_IOMMUFD's iommufd, GROUP_SET_CONTAINER, MAP_FILE). nullptr for a bad fd.
  std::shared_ptr<File> fget(int fd) const;
  // Every fd of the current table that refers to a simulated file.
  std::vector<int> fds() const;
  // Install an already-created file (GROUP_GET_DEVICE_FD returns a new fd): fd or -EMFILE.
  int install(std::shared_ptr<File> file);

  // The simulated machine's PCI devices behind VFIO (empty until devices are added).
  vfio::Machine& machine() noexcept { return *machine_; }

  // Pinned-memory accounting of the one simulated process and its user, in pages, checked
  // against config().rlimit_memlock: iommufd charges the user's (default) or the mm's
  // locked_vm (IOMMU_OPTION_RLIMIT_MODE), Type1 the mm's.
  std::atomic<std::uint64_t>& locked_vm(bool per_mm) noexcept {
    return per_mm ? mm_locked_vm_ : user_locked_vm_;
  }

  // Pins iommufd holds on each page of process memory (the kernel's page_ref_count in units
  // of GUP_PIN_COUNTING_BIAS), which IOMMU_TEST_OP_MD_CHECK_REFS reads. Keyed by the page's
  // VA; `delta` is applied to `npages` pages from `va`.
  void add_page_pins(std::uint64_t va, std::uint64_t npages, int delta);
  unsigned page_pins(std::uint64_t va) const;

 private:
  std::atomic<std::uint64_t> user_locked_vm_{0};
  std::atomic<std::uint64_t> mm_locked_vm_{0};
  SimConfig config_;
  mutable std::mutex pins_mu_;
  std::unordered_map<std::uint64_t, unsigned> page_pins_;  // page VA -> pins (never 0)
  using FdTable = std::vector<std::shared_ptr<File>>;  // indexed by fd
  FdTable* table_locked();                             // the current table; fd_mu_ held
  const FdTable* table_locked() const;
  std::shared_ptr<File> drop_locked(FdTable& t, int fd);

  mutable std::mutex fd_mu_;  // guards nodes_, tables_, next_table_ and the allocator
  std::map<std::string, NodeOpen> nodes_;
  std::map<int, FdTable> tables_;
  int next_table_ = 1;
  FdAlloc fd_alloc_;
  FdRelease fd_release_;
  // Declared last so it goes first; the destructor has closed every file before that.
  std::unique_ptr<vfio::Machine> machine_;
};

}  // namespace fastmap::sim
