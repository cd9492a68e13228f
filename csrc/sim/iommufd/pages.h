// The memory side of an IOAS (iopt_pages): one user VA range or one file range that areas
// point into. COPY makes several areas (possibly in several IOASes) share one IoptPages, so
// pinning and RLIMIT_MEMLOCK charging happen here, once per page, not per area.
//
// "Pinning" in the simulator means: the pages are checked to really exist (and be writable
// for a writable mapping) the way GUP would, are charged, and are held (PageHold) while any
// pin lasts: shared memory through the simulator's own mapping of it, private memory
// through a host kernel pin (see sim/core/page_hold.h, and its fallback). A file range is
// mmap()ed MAP_SHARED once and that mapping lives as long as this object.
//
// Locking: only touched under the owning context's mutex.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "sim/core/page_hold.h"
#include "sim/iommufd/ctx.h"

namespace fastmap::sim {

// Pins iommufd holds on the page at user VA `va` in `kernel`'s process (the kernel's
// page_ref_count in units of GUP_PIN_COUNTING_BIAS), which MD_CHECK_REFS reads.
unsigned page_pins(const KernelCore& kernel, std::uint64_t va);

class IoptPages {
 public:
  // IOPT_ADDRESS_USER: the page-aligned VA range holding [uptr, uptr+length). The caller
  // has checked length and overflow.
  static std::shared_ptr<IoptPages> user(std::uint64_t uptr, std::uint64_t length,
                                         bool writable, AccountMode mode);
  // IOPT_ADDRESS_FILE: a duplicate of the process fd `fd`, range [start, start+length) of
  // the file. 0 or -errno (EBADF, EPERM for a writable map of a file not open for writing).
  static int file(int fd, std::uint64_t start, std::uint64_t length, bool writable,
                  AccountMode mode, std::shared_ptr<IoptPages>* out);
  ~IoptPages();
  IoptPages(const IoptPages&) = delete;
  IoptPages& operator=(const IoptPages&) = delete;

  // Byte offset of the caller's first byte from the first page (what areas' start_byte
  // counts from).
  std::uint64_t first_byte() const noexcept { return first_byte_; }
  bool writable() const noexcept { return writable_; }
  // The allocator's alignment hint for byte `start_byte`: the user VA, or the file offset.
  std::uint64_t hint(std::uint64_t start_byte) const noexcept { return base_ + start_byte; }
  // The process VA holding byte `start_byte` (valid once pinned).
  std::uint64_t va(std::uint64_t start_byte) const noexcept { return va_base_ + start_byte; }

  // Pin pages [first, last] (page indices) for one area: check they can be pinned, then
  // charge the pages no other pin already holds. 0, -EFAULT, -ENOMEM.
  int pin(KernelCore& kernel, std::uint64_t first, std::uint64_t last);
  // Undo one pin(first, last), uncharging the pages nobody pins any more.
  void unpin(KernelCore& kernel, std::uint64_t first, std::uint64_t last);
  // An area holding pin [first, last] was split in two: the pin becomes [first, lhs_last]
  // and [rhs_first, last]. The pinned set, and so the charge, does not change.
  void split_pin(std::uint64_t first, std::uint64_t last, std::uint64_t lhs_last,
                 std::uint64_t rhs_first);

  AccountMode account_mode;  // a per-mm context upgrades user mode to mm, as iommufd does

 private:
  IoptPages() = default;
  int check_pages(std::uint64_t first, std::uint64_t last);
  std::uint64_t pinned_pages_with(std::pair<std::uint64_t, std::uint64_t> extra) const;
  int charge(KernelCore& kernel, std::uint64_t npages);
  void uncharge(KernelCore& kernel, std::uint64_t npages);

  bool writable_ = false;
  bool is_file_ = false;
  std::uint64_t base_ = 0;        // page-aligned user VA or file offset of page 0
  std::uint64_t first_byte_ = 0;  // offset of the mapped range's first byte in page 0
  std::uint64_t npages_ = 0;
  std::uint64_t va_base_ = 0;     // VA of page 0 (user: held pages or base_; file: our mmap)
  PageHold hold_;                 // user: the pinned pages, while pins_ is not empty
  pid_t mm_ = 0;                  // user: the process that mapped it (0: this one)
  int fd_ = -1;                   // file: our duplicate
  void* map_ = nullptr;           // file: MAP_SHARED mapping of all npages_ pages
  std::vector<std::pair<std::uint64_t, std::uint64_t>> pins_;  // one [first,last] per pin
  std::uint64_t charged_ = 0;     // pages charged to account_mode
  // Tell the registry page_pins() reads about pages of [first, last] that no pin in pins_
  // covers (pins_ without this pin): a page's first pin and its last unpin are what the
  // kernel's page refcount sees.
  void count_pins(KernelCore& kernel, std::uint64_t first, std::uint64_t last, int delta);
};

}  // namespace fastmap::sim
