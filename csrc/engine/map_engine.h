// The batch mapping engine: many IOAS mappings per call, all or nothing.
//
// IoasMapper issues IOMMU_IOAS_MAP/UNMAP through the seam for whole batches, keeps a table of
// the segments it mapped (so rollback and partial unmaps know each segment's VA and
// permissions), optionally coalesces neighbours contiguous in VA and IOVA into one kernel
// area, and optionally submits fixed-IOVA batches from several threads (the kernel pins in
// parallel). It never throws; failures come back as a BatchError naming the entry.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <span>
#include <vector>

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
};

// One mapping made through the engine, and the kernel area (run) that holds it.
struct Segment {
  std::uint64_t iova;
  std::uint64_t va;        // 0 for an adopted area (COPY, MAP_FILE): it cannot be re-mapped
  std::uint64_t length;
  std::uint32_t prot;      // IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE
  std::uint64_t run_iova;  // start of the kernel area holding this segment
};

class IoasMapper {
 public:
  IoasMapper(Kernel& kernel, int iommufd, std::uint32_t ioas_id) noexcept
      : kernel_(kernel), fd_(iommufd), ioas_id_(ioas_id) {}

  // Maps entry i = [vas[i], vas[i]+lengths[i]) at fixed_iovas[i] (or, when fixed_iovas is
  // empty, where the kernel chooses) with `prot`. out_iovas[i] receives each entry's IOVA.
  // On failure nothing of the batch stays mapped.
  BatchError map(std::span<const std::uint64_t> vas, std::span<const std::uint64_t> lengths,
                 std::span<const std::uint64_t> fixed_iovas, std::span<std::uint64_t> out_iovas,
                 std::uint32_t prot, const BatchOptions& options);

  // Unmaps the segments exactly at [iovas[i], iovas[i]+lengths[i]), or ranges that cover
  // whole segments. A range that would split a coalesced kernel area is refused (EINVAL,
  // call "coalesced") before anything changes; a kernel failure re-maps what was removed.
  // On success `removed` (if given) receives the IOVAs of the segments removed.
  BatchError unmap(std::span<const std::uint64_t> iovas, std::span<const std::uint64_t> lengths,
                   std::vector<std::uint64_t>* removed_segments = nullptr);

  // Records an area made by another call (IOAS_COPY, IOAS_MAP_FILE) so unmap knows it. Its
  // unmap cannot be undone, so batches unmap such areas last.
  void adopt(std::uint64_t iova, std::uint64_t length, std::uint32_t prot);

  // Unmaps everything in the IOAS: 0 or -errno; *unmapped gets the bytes removed (which can
  // exceed 2^63, so they are not folded into the return value).
  int unmap_all(std::uint64_t* unmapped);

  // Translation over what the engine mapped, like SPDK's vtophys: the VA behind an IOVA and
  // an IOVA for a VA (the lowest, when a VA is mapped more than once). O(log n); false when
  // nothing mapped through the engine covers the address (adopted areas have no VA).
  bool translate_iova(std::uint64_t iova, std::uint64_t* va) const;
  bool translate_va(std::uint64_t va, std::uint64_t* iova) const;

  std::size_t segment_count() const;
  std::vector<Segment> segments() const;
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
  BatchError submit_serial(std::vector<Run>& runs, bool fixed, std::size_t* done);
  BatchError submit_parallel(std::vector<Run>& runs, unsigned threads, std::size_t* done);
  bool rollback_runs(const std::vector<Run>& runs, std::size_t count,
                     const std::vector<char>* mapped);

  // Folds pending_ into segments_; callers hold mu_.
  void index_pending() const;

  Kernel& kernel_;
  int fd_;
  std::uint32_t ioas_id_;
  mutable std::mutex mu_;  // guards the tables (the kernel serializes the ioctls themselves)
  // Segments keyed by IOVA. Batches append to pending_ (a flat array: the map path stays
  // close to the bare ioctl loop) and the ordered index is built when it is first needed.
  mutable std::map<std::uint64_t, Segment> segments_;
  mutable std::vector<Segment> pending_;
  // VA -> segment iova, rebuilt on the first VA lookup after a change.
  mutable std::multimap<std::uint64_t, std::uint64_t> by_va_;
  mutable bool by_va_stale_ = true;
  std::uint64_t max_length_ = 0;  // longest segment ever mapped: bounds the VA scan
};

}  // namespace fastmap::engine
