// The IOVA side of an IOAS (io_pagetable): three ordered trees and the attached domains.
//
//  - areas:    the mappings, [iova, last] -> a slice of an IoptPages. Never overlap.
//  - allowed:  IOAS_ALLOW_IOVAS ranges; they only steer automatic IOVA allocation and block
//              future reservations. Never overlap.
//  - reserved: ranges that may never be mapped (a domain's aperture complement, a device's
//              reserved regions, selftest ADD_RESERVED), each with an owner so it can be
//              removed on detach. May overlap each other.
//
// std::map keyed by start gives ordered iteration and O(log n) lookup of the area that can
// intersect a point; a second map of the gaps between areas lets the first-fit allocator
// skip densely packed areas. Areas hold a pin on their pages while at least one domain is attached
// (pinning is lazy, as in the kernel: with no domain a map only records the area).
//
// Locking: only touched under the owning context's mutex; domains lock themselves.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "sim/iommu/domain.h"
#include "sim/iommufd/pages.h"

namespace fastmap::sim {

class IommufdCtx;

// An in-kernel user of an IOAS (iommufd_access): it may pin pages of areas, and is told to
// drop them before an unmap removes those areas.
class IoasAccess {
 public:
  virtual ~IoasAccess() = default;
  // ops->unmap: [iova, iova+length) is going away; unpin anything inside it.
  virtual void unmap_notify(std::uint64_t iova, std::uint64_t length) = 0;
  // PAGE_SIZE for an access that pins pages, else 1: the IOAS's IOVA alignment follows it.
  std::uint64_t iova_alignment = 1;
};

// One area's pages pinned by an access: the area (by IOVA) and the page indices.
struct AccessPin {
  std::uint64_t area_iova;
  std::uint64_t first;
  std::uint64_t last;
};

struct Area {
  std::uint64_t iova = 0;
  std::uint64_t last = 0;  // inclusive
  std::shared_ptr<IoptPages> pages;
  std::uint64_t start_byte = 0;  // offset of `iova`'s byte from the pages' first page
  int prot = 0;                  // kIommuRead | kIommuWrite
  bool pinned = false;
  // The page size the memory is really in (backing_page_size), looked up when a domain
  // first needs it; 0 until then.
  std::uint64_t backing = 0;
  // Pins held by accesses (iopt_area->num_accesses): unmap asks them to let go first.
  int num_accesses = 0;

  std::uint64_t length() const noexcept { return last - iova + 1; }
  std::uint64_t page_offset() const noexcept;
  std::uint64_t first_index() const noexcept;
  std::uint64_t last_index() const noexcept;
  // Byte offset into the pages of IOVA `a` (inside the area).
  std::uint64_t start_byte_at(std::uint64_t a) const noexcept { return start_byte + (a - iova); }
};

// A piece of some pages that a map or copy turns into one area.
struct PagesSlice {
  std::shared_ptr<IoptPages> pages;
  std::uint64_t start_byte;
  std::uint64_t length;
};

struct IovaSpan {
  std::uint64_t start;
  std::uint64_t last;
};

class IoPagetable {
 public:
  explicit IoPagetable(IommufdCtx& ctx) : ctx_(ctx) {}
  ~IoPagetable();
  IoPagetable(const IoPagetable&) = delete;
  IoPagetable& operator=(const IoPagetable&) = delete;

  std::uint64_t iova_alignment() const noexcept { return iova_alignment_; }
  bool large_pages_disabled() const noexcept { return disable_large_pages_; }
  const std::map<std::uint64_t, Area>& areas() const noexcept { return areas_; }
  bool has_domains() const noexcept { return !domains_.empty(); }
  const std::vector<std::shared_ptr<Domain>>& domains() const noexcept { return domains_; }

  // iopt_map_pages: areas for `slices` laid out back to back at *iova (or at an allocated
  // IOVA when `alloc`, *iova then set), filled into every domain. 0 or -errno; nothing is
  // left behind on failure.
  int map_pages(const std::vector<PagesSlice>& slices, std::uint64_t length, std::uint64_t* iova,
                int prot, bool alloc);
  // iopt_unmap_iova_range: removes whole areas inside [start, last]. *unmapped gets the
  // bytes removed even on failure (-ENOENT for a partially covered area).
  int unmap(std::uint64_t start, std::uint64_t last, std::uint64_t* unmapped);
  // iopt_cut_iova (VFIO type1 v1 compat): split the areas holding each IOVA so that the
  // IOVA becomes the last byte of an area. 0, -EINVAL (misaligned cut, or large IOPTEs may
  // back the area).
  int cut(const std::vector<std::uint64_t>& iovas);
  // iopt_get_pages: the slices covering [iova, iova+length), which must be contiguously
  // mapped (-ENOENT otherwise).
  int get_pages(std::uint64_t iova, std::uint64_t length, std::vector<PagesSlice>* out) const;

  // IOAS_ALLOW_IOVAS: replace the allowed ranges (already validated as non-overlapping).
  // -EADDRINUSE when one intersects a reservation.
  int set_allowed(const std::vector<IovaSpan>& ranges);
  // iopt_reserve_iova: -EADDRINUSE when [start, last] intersects an area or allowed range.
  int reserve(std::uint64_t start, std::uint64_t last, const void* owner);
  void remove_reserved(const void* owner);
  // The holes of the reserved tree over the whole 64-bit space (IOAS_IOVA_RANGES).
  std::vector<IovaSpan> usable_ranges() const;

  // iopt_table_add_domain: alignment, aperture reservations, then pin and map every area.
  int add_domain(const std::shared_ptr<Domain>& domain);
  void remove_domain(const Domain* domain);

  // iopt_add_access / iopt_remove_access: the access's alignment joins the IOAS's
  // (-EADDRINUSE when an existing area does not meet it).
  int add_access(IoasAccess* access);
  void remove_access(IoasAccess* access);
  // iommufd_access_pin_pages' walk: pin the pages under [iova, iova+length) for an access.
  // 0, -EINVAL (empty, or not page aligned), -EOVERFLOW, -EPERM (area lacks the
  // permission), -ENOENT (not contiguously mapped), -EFAULT/-ENOMEM (pinning). On success
  // *pins lists what to give to access_unpin, and *vas the user VA of each page.
  int access_pin(std::uint64_t iova, std::uint64_t length, bool write,
                 std::vector<AccessPin>* pins, std::vector<std::uint64_t>* vas);
  void access_unpin(const std::vector<AccessPin>& pins);
  // iommufd_access_rw: copy between `data` and the memory under [iova, iova+length).
  int access_rw(std::uint64_t iova, void* data, std::uint64_t length, bool write);

  // IOMMU_OPTION_HUGE_PAGES.
  int disable_large_pages();
  void enable_large_pages();

  // The automatic IOVA allocator (iova_alloc.cc). 0, -EOVERFLOW, -EINVAL, -ENOSPC.
  int alloc_iova(std::uint64_t addr, std::uint64_t length, std::uint64_t* iova) const;

  // Interval queries.
  const Area* area_containing(std::uint64_t iova) const;
  bool area_intersects(std::uint64_t start, std::uint64_t last) const;
  bool allowed_intersects(std::uint64_t start, std::uint64_t last) const;
  bool reserved_intersects(std::uint64_t start, std::uint64_t last) const;

 private:
  struct Reserved {
    std::uint64_t start;
    std::uint64_t last;
    const void* owner;
  };

  int check_iova(std::uint64_t iova, std::uint64_t length) const;
  int check_alignment(std::uint64_t align) const;
  int recalculate_alignment();
  // Pin an area (if no domain holds it yet) and map it into `domains`; undone on failure.
  int fill_area(Area& a, const std::vector<std::shared_ptr<Domain>>& domains);
  void unfill_area(Area& a, const std::vector<std::shared_ptr<Domain>>& domains);
  // iommu_map of one area: IOPTEs no larger than the pages backing it.
  int map_area(Domain& d, Area& a);
  // Keep free_ the complement of areas_: an area [start, last] was added / removed.
  void occupy(std::uint64_t start, std::uint64_t last);
  void release(std::uint64_t start, std::uint64_t last);
  // The union of the reserved ranges, sorted and merged.
  std::vector<IovaSpan> reserved_union() const;
  // Visit the areas covering [iova, last] in order while they are contiguous: fn(area,
  // cur, l) for each piece [cur, l]; a non-zero return stops the walk and is returned.
  // -ENOENT when the areas stop before `last`.
  template <class F>
  int for_each_contig(std::uint64_t iova, std::uint64_t last, F&& fn);
  template <class F>
  bool for_each_hole(std::uint64_t start, std::uint64_t last, F&& fn) const;

  IommufdCtx& ctx_;
  std::map<std::uint64_t, Area> areas_;
  // The gaps between areas (start -> last), so the allocator visits only real holes
  // instead of every area below the one it picks.
  std::map<std::uint64_t, std::uint64_t> free_{{0, ~0ull}};
  std::map<std::uint64_t, std::uint64_t> allowed_;  // start -> last
  std::vector<Reserved> reserved_;                  // few entries; kept sorted by start
  std::vector<std::shared_ptr<Domain>> domains_;
  std::vector<IoasAccess*> accesses_;
  std::uint64_t iova_alignment_ = 1;
  bool disable_large_pages_ = false;
};

}  // namespace fastmap::sim
