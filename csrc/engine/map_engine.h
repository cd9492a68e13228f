// The batch mapping engine: many IOAS mappings per call, all or nothing.
//
// IoasMapper issues IOMMU_IOAS_MAP/UNMAP through the seam for whole batches, keeps a table of
// the segments it mapped (so rollback and partial unmaps know each segment's VA and
// permissions), optionally coalesces neighbours contiguous in VA and IOVA into one kernel
// area, and optionally submits fixed-IOVA batches from several threads (the kernel pins in
// parallel). It never throws; failures come back as a BatchError naming the entry.
//
// One owner per piece of state: the mapper owns, for its IOAS,
//   - the segment table (what is mapped, where, with which permissions),
//   - the one VA <-> IOVA translation index over it,
//   - the optional IOVA allocator (iovas="dense"), kept in step with every map and unmap,
//   - the pins: an opaque owner of the memory each segment maps (for Python, the buffer
//     export). A pin leaves the table only with the unmap that removed its segment from the
//     kernel, and is then handed to the caller (or parked, see take_released()); the mapper
//     never destroys a pin itself, so a pin whose release needs a lock the caller holds
//     (the GIL) is always released by the caller. Pins of segments still mapped when the
//     mapper is destroyed are leaked on purpose: the kernel IOAS may still map that memory.
//
// Thread-safety contract: every public member may be called from any thread at any time.
// One mutex per mapper serializes them; a map or unmap holds it across its ioctls, so the
// table, the allocator and the kernel IOAS change together and are never seen half done.
// The mutex is never held while calling back into the caller, and a caller must not hold a
// lock a mapper call could wait on (the bindings release the GIL before every call).
// Separate mappers (separate IOASes) share nothing and run in parallel.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

#include "engine/iova_allocator.h"
#include "engine/segment_table.h"
#include "seam/kernel.h"

namespace fastmap::engine {

// Why a batch failed: the errno, the entry, and which call said so. errno_value 0 = success.
struct BatchError {
  int errno_value = 0;
  std::size_t index = 0;           // the entry named in the error
  const char* call = nullptr;      // "IOMMU_IOAS_MAP", "IOMMU_IOAS_UNMAP" or a validation step
  bool rollback_failed = false;    // undoing entries 0..index-1 failed too (state is not clean)
  explicit operator bool() const noexcept { return errno_value != 0; }
};

struct BatchOptions {
  bool coalesce = false;  // merge neighbours contiguous in VA and IOVA into one kernel area
  unsigned threads = 1;   // >1: submit fixed-IOVA batches from this many threads
  // With no fixed IOVAs: place the batch with the mapper's allocator (enable_allocator()
  // first) instead of letting the kernel choose. `align` is the IOVA granule.
  bool dense = false;
  std::uint64_t align = 1;
};

class IoasMapper {
 public:
  IoasMapper(Kernel& kernel, int iommufd, std::uint32_t ioas_id) noexcept
      : kernel_(kernel), fd_(iommufd), ioas_id_(ioas_id) {}
  ~IoasMapper();
  IoasMapper(const IoasMapper&) = delete;
  IoasMapper& operator=(const IoasMapper&) = delete;

  // Maps entry i = [vas[i], vas[i]+lengths[i]) at fixed_iovas[i] (or, when fixed_iovas is
  // empty, where the kernel or, with options.dense, the allocator chooses) with `prot`.
  // out_iovas[i] receives each entry's IOVA. `pins` is empty or one per entry; on success
  // the mapper takes them (moved out of the span), on failure they stay with the caller.
  // On failure nothing of the batch stays mapped or allocated.
  BatchError map(std::span<const std::uint64_t> vas, std::span<const std::uint64_t> lengths,
                 std::span<const std::uint64_t> fixed_iovas, std::span<std::uint64_t> out_iovas,
                 std::uint32_t prot, const BatchOptions& options, std::span<Pin> pins = {});

  // Unmaps the segments exactly at [iovas[i], iovas[i]+lengths[i]), or ranges that cover
  // whole segments. A range that would split a coalesced kernel area is refused (EINVAL,
  // call "coalesced") before anything changes; a kernel failure re-maps what was removed.
  // On success *removed_bytes (if given) gets the bytes unmapped, the removed segments'
  // pins go to `released` (or, when it is null, are parked
  // for take_released()) and their allocations are freed.
  BatchError unmap(std::span<const std::uint64_t> iovas, std::span<const std::uint64_t> lengths,
                   std::vector<Pin>* released = nullptr,
                   std::uint64_t* removed_bytes = nullptr);

  // Records an area made by another call (IOAS_COPY, IOAS_MAP_FILE) so unmap knows it, with
  // the pin that keeps its memory alive. Its unmap cannot be undone, so batches unmap such
  // areas last.
  void adopt(std::uint64_t iova, std::uint64_t length, std::uint32_t prot, Pin pin = {});

  // IOMMU_IOAS_COPY of `src`'s [src_iova, src_iova+length) into this IOAS, at *iova when
  // `fixed`, else where the kernel chooses (written to *iova). The new area holds the pins
  // of every source segment it shares pages with, so unmapping the source cannot free memory
  // this IOAS still maps. `src` may be this mapper. 0 or -errno.
  int copy_from(const IoasMapper& src, std::uint64_t src_iova, std::uint64_t length,
                std::uint64_t* iova, bool fixed, std::uint32_t prot);
  // IOMMU_IOAS_MAP_FILE of `length` bytes of memfd `file_fd` at `offset`; the kernel holds
  // the file. 0 or -errno.
  int map_file(int file_fd, std::uint64_t offset, std::uint64_t length, std::uint64_t* iova,
               bool fixed, std::uint32_t prot);

  // Unmaps everything in the IOAS: 0 or -errno; *unmapped gets the bytes removed (which can
  // exceed 2^63, so they are not folded into the return value). Pins as for unmap().
  int unmap_all(std::uint64_t* unmapped, std::vector<Pin>* released = nullptr);

  // The IOAS is gone from the kernel (IOMMU_DESTROY, or its iommufd closed): drop the table
  // and hand every pin to `released` (or park them).
  void forget_all(std::vector<Pin>* released = nullptr);

  // Pins removed by unmaps that had nowhere to put them (the C API): the caller releases.
  std::vector<Pin> take_released();

  // Makes the allocator over `usable` ([start, last] ranges), with every segment mapped so
  // far taken. A no-op when there already is one. -errno from the allocator.
  int enable_allocator(std::span<const IovaRange> usable);
  bool has_allocator() const;
  // The allocator's (start, last) allocations in address order (reserved ranges excluded).
  std::vector<IovaRange> allocations() const;

  // Translation over what the engine mapped, like SPDK's vtophys: the VA behind an IOVA and
  // an IOVA for a VA (the lowest, when a VA is mapped more than once). O(log n); false when
  // nothing mapped through the engine covers the address (adopted areas have no VA).
  bool translate_iova(std::uint64_t iova, std::uint64_t* va) const;
  bool translate_va(std::uint64_t va, std::uint64_t* iova) const;
  // Batches of the same: out[i] and found[i] (1/0) per input; returns how many were found.
  std::size_t translate_va_bulk(std::span<const std::uint64_t> vas, std::span<std::uint64_t> out,
                                std::span<std::uint8_t> found) const;
  std::size_t translate_iova_bulk(std::span<const std::uint64_t> iovas,
                                  std::span<std::uint64_t> out,
                                  std::span<std::uint8_t> found) const;

  std::size_t segment_count() const;
  std::size_t pin_count() const;
  std::vector<SegmentInfo> segments() const;  // snapshots, by IOVA
  std::uint32_t ioas_id() const noexcept { return ioas_id_; }

 private:
  struct Run {
    std::uint64_t iova;
    std::uint64_t va;
    std::uint64_t length;
    std::uint32_t prot;
    std::size_t first;  // first batch entry in the run
    std::size_t count;  // entries in the run
  };

  int map_one(std::uint64_t va, std::uint64_t length, std::uint64_t* iova, bool fixed,
              std::uint32_t prot) noexcept;
  int unmap_one(std::uint64_t iova, std::uint64_t length) noexcept;
  std::vector<Run> plan_runs(std::span<const std::uint64_t> vas,
                             std::span<const std::uint64_t> lengths,
                             std::span<const std::uint64_t> fixed_iovas, std::uint32_t prot,
                             bool coalesce) const;
  // map() without coalescing or threads: entry by entry from the caller's arrays, rolled
  // back in reverse on failure (with `chosen`, the allocator's placements are freed too).
  BatchError map_direct(std::span<const std::uint64_t> vas, std::span<const std::uint64_t> lengths,
                        std::span<const std::uint64_t> fixed_iovas,
                        std::span<std::uint64_t> out_iovas, std::uint32_t prot,
                        const std::vector<std::uint64_t>* chosen, std::span<Pin> pins);
  BatchError submit_serial(std::vector<Run>& runs, bool fixed, std::size_t* done);
  BatchError submit_parallel(std::vector<Run>& runs, unsigned threads, std::size_t* done);
  bool rollback_runs(const std::vector<Run>& runs, std::size_t count,
                     const std::vector<char>* mapped);

  // Allocator bookkeeping for a mapped / unmapped segment; callers hold mu_.
  void record(std::uint64_t iova, std::uint64_t length);
  void forget(std::uint64_t iova, std::uint64_t length);
  void release(Pin&& pin, std::vector<Pin>* released);
  // unmap(): sorts and dedups hits_ and groups them into victims_ (kernel areas). False,
  // with the request in *bad_entry, if a request takes only part of a coalesced area.
  bool group_hits(std::size_t* bad_entry);
  // table_.settle(), parking the pins of replaced leftovers; callers hold mu_.
  void settle();
  // adopt() and pins_in() for callers holding the mutexes.
  void adopt_locked(std::uint64_t iova, std::uint64_t length, std::uint32_t prot, Pin pin);
  Pin pins_in_locked(std::uint64_t iova, std::uint64_t length) const;

  Kernel& kernel_;
  int fd_;
  std::uint32_t ioas_id_;
  mutable std::mutex mu_;  // guards the tables (the kernel serializes the ioctls themselves)
  // The segments and the VA index, both updated by the call that maps or unmaps (no work
  // is left for a later call): see segment_table.h.
  SegmentTable table_;
  // unmap() scratch, kept between calls so an unmap of a big batch does not allocate.
  struct Hit {
    std::size_t seg;    // index in table_
    std::size_t entry;  // the request that takes it
  };
  struct Victim {            // one kernel area to remove
    std::size_t head;        // index in table_ of its first segment
    std::uint64_t iova;      // its start
    std::uint64_t length;    // of the whole area
    std::size_t entry;       // the request that takes it
  };
  std::vector<Hit> hits_;
  std::vector<Victim> victims_;
  std::optional<IovaAllocator> allocator_;
  std::vector<IovaRange> usable_;  // what the allocator was made over (unmap_all remakes it)
  std::vector<Pin> parked_;        // see take_released()
  std::size_t pins_ = 0;           // segments holding a pin
};

}  // namespace fastmap::engine
