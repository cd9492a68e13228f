// An IOMMU domain: the I/O page table a device translates through.
//
// It holds IOPTEs from IOVA to process VA (the simulator's "physical" address is the real
// process address), with permissions and a dirty bit per IOPTE. Devices DMA through it;
// iommufd HWPTs and Type1 containers own one each. Thread-safe: DMA from device threads can
// race with map/unmap from ioctls.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <type_traits>

#include "sim/iommu/iommu_model.h"

namespace fastmap::sim {

inline constexpr int kIommuRead = 1 << 0;
inline constexpr int kIommuWrite = 1 << 1;

// One observable DMA fault, like the "DMAR: DRHD: handling fault" lines in dmesg.
struct DmaFault {
  std::uint64_t iova;
  bool write;
  int error;  // -EFAULT: no translation; -EPERM: permission
};

class Domain {
 public:
  explicit Domain(const IommuModel& model, bool dirty_capable);
  ~Domain();
  Domain(const Domain&) = delete;
  Domain& operator=(const Domain&) = delete;

  const IommuModel& model() const noexcept;
  // 1 << ffs(pgsize_bitmap): the granule iommufd's iova_alignment comes from.
  std::uint64_t min_page_size() const noexcept;
  bool dirty_capable() const noexcept;

  // iommu_map: IOPTEs for [iova, iova+len) -> [va, va+len), using the largest sizes in
  // pgsize_bitmap that the alignment of iova and va allow (largest_pages=false forces the
  // smallest). 0, -EINVAL (misaligned/outside aperture), -EEXIST (already mapped).
  int map(std::uint64_t iova, std::uint64_t va, std::uint64_t len, int prot,
          bool largest_pages = true) noexcept;
  // iommu_unmap: removes IOPTEs in the range; returns bytes unmapped.
  std::uint64_t unmap(std::uint64_t iova, std::uint64_t len) noexcept;

  // Device DMA, translated per IOPTE and copied with real memory accesses. A write sets the
  // dirty bit of every IOPTE it touches while tracking is on. Returns 0 or the fault's
  // -errno; the fault is also recorded.
  int dma_read(std::uint64_t iova, void* dst, std::size_t len) noexcept;
  int dma_write(std::uint64_t iova, const void* src, std::size_t len) noexcept;
  // Translation without access (for tests): the VA, or -EFAULT/-EPERM.
  long long translate(std::uint64_t iova, int prot) const noexcept;

  // Dirty tracking (only on a dirty_capable domain; -EOPNOTSUPP otherwise).
  int set_dirty_tracking(bool enable) noexcept;
  bool dirty_tracking() const noexcept;
  // Mark the IOPTE holding `iova` dirty if mapped (selftest DIRTY op). Returns 1 if marked.
  int mark_dirty(std::uint64_t iova) noexcept;
  // read_and_clear_dirty over [iova, iova+len): for every dirty IOPTE intersecting it, call
  // set_bits(first_byte_iova, last_byte_iova) of the IOPTE clipped to the range; clear the
  // IOPTE's dirty bit unless no_clear. Bits only ever get set. Dirty IOPTEs that are
  // adjacent in IOVA may be reported as one call covering all of them (the walk is
  // word-at-a-time). While tracking is off nothing is reported or cleared, as the VT-d and
  // mock drivers refuse a read with a bitmap then.
  template <class F>
  void read_and_clear_dirty(std::uint64_t iova, std::uint64_t len, bool no_clear, F&& set_bits);

  // The word-at-a-time form of read_and_clear_dirty, for harvesting into a bitmap without a
  // call per dirty IOPTE (added for iommufd's GET_DIRTY_BITMAP): for each run of equally
  // sized IOPTEs intersecting [iova, iova+len), in IOVA order, calls
  // fn(ctx, run_iova, shift, words, lo, hi). Bit i of `words` (LSB first) is the dirty bit of
  // the IOPTE at run_iova + (i << shift); bits [lo, hi] are the IOPTEs that intersect the
  // range, and only those are cleared afterwards (unless no_clear). Nothing is reported
  // while tracking is off.
  using DirtyWordsFn = void (*)(void* ctx, std::uint64_t run_iova, unsigned shift,
                                const std::uint64_t* words, std::uint64_t lo, std::uint64_t hi);
  void for_each_dirty_words(std::uint64_t iova, std::uint64_t len, bool no_clear, DirtyWordsFn fn,
                            void* ctx);

  // The fault log, oldest first (bounded: the oldest entries go when it is full).
  std::size_t take_faults(DmaFault* out, std::size_t max) noexcept;
  std::size_t fault_count() const noexcept;

  // Introspection for tests and debugfs-like views: the size of the IOPTE that maps `iova`
  // (0 when unmapped), total bytes mapped, number of IOPTEs, and the number of internal
  // runs (the memory cost of the representation).
  std::uint64_t iopte_size(std::uint64_t iova) const noexcept;
  std::uint64_t mapped_bytes() const noexcept;
  std::uint64_t iopte_count() const noexcept;
  std::size_t run_count() const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  void for_each_dirty(std::uint64_t iova, std::uint64_t len, bool no_clear,
                      void (*cb)(void*, std::uint64_t, std::uint64_t), void* ctx);
};

template <class F>
void Domain::read_and_clear_dirty(std::uint64_t iova, std::uint64_t len, bool no_clear,
                                  F&& set_bits) {
  for_each_dirty(
      iova, len, no_clear,
      [](void* c, std::uint64_t a, std::uint64_t b) { (*static_cast<std::remove_reference_t<F>*>(c))(a, b); },
      &set_bits);
}

}  // namespace fastmap::sim
