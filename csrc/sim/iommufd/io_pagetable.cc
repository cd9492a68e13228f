#include "sim/iommufd/io_pagetable.h"

#include <algorithm>
#include <cerrno>
#include <limits>

#include "sim/core/fail_nth.h"
#include "sim/core/kernel_pin.h"
#include "sim/iommufd/backing.h"
#include "sim/iommufd/ctx.h"
#include "sim/core/user_memory.h"

namespace fastmap::sim {

namespace {
constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();
}

std::uint64_t Area::page_offset() const noexcept { return start_byte % host_page_size(); }
std::uint64_t Area::first_index() const noexcept { return start_byte / host_page_size(); }
std::uint64_t Area::last_index() const noexcept {
  return (start_byte + length() - 1) / host_page_size();
}

IoPagetable::~IoPagetable() {
  for (auto& [iova, a] : areas_) {
    unfill_area(a, domains_);
    if (a.pinned) a.pages->unpin(ctx_.kernel, a.first_index(), a.last_index());
  }
}

// ---- interval queries -------------------------------------------------------------------

const Area* IoPagetable::area_containing(std::uint64_t iova) const {
  auto it = areas_.upper_bound(iova);
  if (it == areas_.begin()) return nullptr;
  --it;
  return it->second.last >= iova ? &it->second : nullptr;
}

bool IoPagetable::area_intersects(std::uint64_t start, std::uint64_t last) const {
  // Areas never overlap, so only the last one starting at or before `last` can reach back
  // to `start`.
  auto it = areas_.upper_bound(last);
  if (it == areas_.begin()) return false;
  --it;
  return it->second.last >= start;
}

bool IoPagetable::allowed_intersects(std::uint64_t start, std::uint64_t last) const {
  auto it = allowed_.upper_bound(last);
  if (it == allowed_.begin()) return false;
  --it;
  return it->second >= start;
}

bool IoPagetable::reserved_intersects(std::uint64_t start, std::uint64_t last) const {
  for (const auto& r : reserved_) {
    if (r.start > last) break;
    if (r.last >= start) return true;
  }
  return false;
}

std::vector<IovaSpan> IoPagetable::reserved_union() const {
  std::vector<IovaSpan> out;
  for (const auto& r : reserved_) {  // sorted by start
    if (!out.empty() && (out.back().last == kMax || r.start <= out.back().last + 1)) {
      out.back().last = std::max(out.back().last, r.last);
    } else {
      out.push_back({r.start, r.last});
    }
  }
  return out;
}

std::vector<IovaSpan> IoPagetable::usable_ranges() const {
  std::vector<IovaSpan> holes;
  std::uint64_t cur = 0;
  for (const auto& u : reserved_union()) {
    if (u.start > cur) holes.push_back({cur, u.start - 1});
    if (u.last == kMax) return holes;
    cur = u.last + 1;
  }
  holes.push_back({cur, kMax});
  return holes;
}

// ---- areas ------------------------------------------------------------------------------

void IoPagetable::occupy(std::uint64_t start, std::uint64_t last) {
  // The gap holding the new area (areas never overlap, so one gap holds all of it).
  auto it = std::prev(free_.upper_bound(start));
  const std::uint64_t gap_start = it->first, gap_last = it->second;
  free_.erase(it);
  if (gap_start < start) free_.emplace(gap_start, start - 1);
  if (last < gap_last) free_.emplace(last + 1, gap_last);
}

void IoPagetable::release(std::uint64_t start, std::uint64_t last) {
  std::uint64_t s = start, l = last;
  auto next = free_.upper_bound(start);
  if (next != free_.end() && l != kMax && next->first == l + 1) {
    l = next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->second + 1 == s) {
      s = prev->first;
      free_.erase(prev);
    }
  }
  free_.emplace(s, l);
}

int IoPagetable::check_iova(std::uint64_t iova, std::uint64_t length) const {
  if (iova & (iova_alignment_ - 1)) return -EINVAL;
  if (iova + (length - 1) < iova) return -EOVERFLOW;
  const std::uint64_t last = iova + (length - 1);
  if (reserved_intersects(iova, last)) return -EINVAL;
  if (area_intersects(iova, last)) return -EEXIST;
  return 0;
}

int IoPagetable::fill_area(Area& a, const std::vector<std::shared_ptr<Domain>>& domains) {
  if (domains.empty()) return 0;
  bool pinned_here = false;
  if (!a.pinned) {
    if (int rc = a.pages->pin(ctx_.kernel, a.first_index(), a.last_index())) return rc;
    a.pinned = pinned_here = true;
  }
  for (std::size_t i = 0; i < domains.size(); ++i) {
    int rc = map_area(*domains[i], a);
    if (rc) {
      for (std::size_t j = 0; j < i; ++j) domains[j]->unmap(a.iova, a.length());
      if (pinned_here) {
        a.pages->unpin(ctx_.kernel, a.first_index(), a.last_index());
        a.pinned = false;
      }
      return rc;
    }
  }
  return 0;
}

int IoPagetable::map_area(Domain& d, Area& a) {
  const std::uint64_t va = a.pages->va(a.start_byte);
  const std::uint64_t bitmap = d.model().pgsize_bitmap;
  const std::uint64_t large = bitmap & ~(bitmap & -bitmap);  // the sizes above the smallest
  // Too short for any large IOPTE, or large pages switched off (HUGE_PAGES=0): the
  // smallest IOPTEs, without looking at the backing.
  if (disable_large_pages_ || !large || a.length() < (large & -large)) {
    return d.map(a.iova, va, a.length(), a.prot, false);
  }
  if (!a.backing) {
    a.backing = backing_page_size(va, a.length(), ctx_.config.transparent_hugepage);
  }
  if (a.backing <= host_page_size()) return d.map(a.iova, va, a.length(), a.prot, false);
  // Physically contiguous only within each backing page: map page by page so no IOPTE
  // spans two of them.
  for (std::uint64_t cur = a.iova;;) {
    const std::uint64_t chunk_last = std::min(a.last, cur | (a.backing - 1));
    if (int rc = d.map(cur, va + (cur - a.iova), chunk_last - cur + 1, a.prot, true)) {
      if (cur != a.iova) d.unmap(a.iova, cur - a.iova);
      return rc;
    }
    if (chunk_last == a.last) return 0;
    cur = chunk_last + 1;
  }
}

void IoPagetable::unfill_area(Area& a, const std::vector<std::shared_ptr<Domain>>& domains) {
  for (const auto& d : domains) d->unmap(a.iova, a.length());
}

int IoPagetable::map_pages(const std::vector<PagesSlice>& slices, std::uint64_t length,
                           std::uint64_t* iova, int prot, bool alloc) {
  if ((length & (iova_alignment_ - 1)) || length == 0) return -EINVAL;
  int rc = alloc ? alloc_iova(slices.front().pages->hint(slices.front().start_byte), length, iova)
                 : check_iova(*iova, length);
  if (rc) return rc;

  std::vector<std::uint64_t> inserted;
  auto abort = [&](int err) {
    for (auto key : inserted) {
      auto it = areas_.find(key);
      release(it->second.iova, it->second.last);
      areas_.erase(it);
    }
    return err;
  };
  std::uint64_t cur = *iova;
  for (const auto& s : slices) {
    if ((prot & kIommuWrite) && !s.pages->writable()) return abort(-EPERM);
    if (should_fail()) return abort(-ENOMEM);  // iopt_alloc_area's kzalloc
    Area a;
    a.iova = cur;
    a.pages = s.pages;
    a.start_byte = s.start_byte;
    a.prot = prot;
    if (a.page_offset() & (iova_alignment_ - 1)) return abort(-EINVAL);
    if (cur + (s.length - 1) < cur) return abort(-EOVERFLOW);
    a.last = cur + (s.length - 1);
    occupy(a.iova, a.last);
    areas_.emplace(cur, std::move(a));
    inserted.push_back(cur);
    cur += s.length;
  }
  for (std::size_t i = 0; i < inserted.size(); ++i) {
    rc = fill_area(areas_.at(inserted[i]), domains_);
    if (rc) {
      for (std::size_t j = 0; j < i; ++j) {
        Area& a = areas_.at(inserted[j]);
        unfill_area(a, domains_);
        if (a.pinned) a.pages->unpin(ctx_.kernel, a.first_index(), a.last_index());
      }
      return abort(rc);
    }
  }
  return 0;
}

int IoPagetable::unmap(std::uint64_t start, std::uint64_t last, std::uint64_t* unmapped) {
  KernelPinBatch batch;  // the host pins of every area go together, at the end
  std::uint64_t bytes = 0;
  int rc = 0;
  int tries = 0;
  for (;;) {
    // The first area intersecting [start, last]; removed ones are gone, so always search
    // from `start` again.
    auto it = areas_.upper_bound(start);
    if (it != areas_.begin() && std::prev(it)->second.last >= start) --it;
    if (it == areas_.end() || it->first > last) break;
    Area& a = it->second;
    if (a.iova < start || a.last > last) {
      rc = -ENOENT;  // unmap never splits an area; earlier removals stay done
      break;
    }
    if (a.num_accesses) {
      // Ask every access to drop its pins in this area, then look again: an access that
      // does not respond makes the kernel give up after 100 tries.
      if (++tries > 100) {
        rc = -EDEADLOCK;
        break;
      }
      const std::uint64_t area_iova = a.iova, area_len = a.length();
      const std::vector<IoasAccess*> accesses(accesses_);
      for (IoasAccess* acc : accesses) acc->unmap_notify(area_iova, area_len);
      continue;
    }
    unfill_area(a, domains_);
    if (a.pinned) a.pages->unpin(ctx_.kernel, a.first_index(), a.last_index());
    bytes += a.length();
    release(a.iova, a.last);
    areas_.erase(it);
  }
  *unmapped = bytes;
  return rc;
}

int IoPagetable::cut(const std::vector<std::uint64_t>& iovas) {
  for (std::uint64_t iova : iovas) {
    auto it = areas_.upper_bound(iova);
    if (it == areas_.begin() || std::prev(it)->second.last < iova) continue;
    Area& a = std::prev(it)->second;
    // iopt_area_split: `iova` becomes the last byte of the left part. Cutting at either end
    // of the area is a no-op.
    if (iova == a.iova || iova == a.last) continue;
    const std::uint64_t rhs_start = iova + 1;
    if ((rhs_start & (iova_alignment_ - 1)) || (a.start_byte_at(rhs_start) & (iova_alignment_ - 1))) {
      return -EINVAL;
    }
    // A domain may hold large IOPTEs across the cut.
    if (!domains_.empty() && !disable_large_pages_) return -EINVAL;
    Area rhs = a;
    rhs.iova = rhs_start;
    rhs.start_byte = a.start_byte_at(rhs_start);
    const std::uint64_t first = a.first_index(), last = a.last_index();
    a.last = iova;
    if (a.pinned) a.pages->split_pin(first, last, a.last_index(), rhs.first_index());
    areas_.emplace(rhs_start, std::move(rhs));
  }
  return 0;
}

int IoPagetable::get_pages(std::uint64_t iova, std::uint64_t length,
                           std::vector<PagesSlice>* out) const {
  if (length == 0) return -EINVAL;
  if (iova + (length - 1) < iova) return -EOVERFLOW;
  const std::uint64_t last = iova + (length - 1);
  std::uint64_t cur = iova;
  const Area* a = area_containing(cur);
  while (a) {
    const std::uint64_t l = std::min(last, a->last);
    out->push_back({a->pages, a->start_byte_at(cur), l - cur + 1});
    if (a->last >= last) return 0;
    cur = a->last + 1;
    auto next = areas_.find(cur);
    a = next == areas_.end() ? nullptr : &next->second;
  }
  out->clear();
  return -ENOENT;
}

// ---- allowed and reserved ranges ---------------------------------------------------------

int IoPagetable::set_allowed(const std::vector<IovaSpan>& ranges) {
  for (const auto& r : ranges) {
    if (reserved_intersects(r.start, r.last)) return -EADDRINUSE;
  }
  allowed_.clear();
  for (const auto& r : ranges) allowed_.emplace(r.start, r.last);
  return 0;
}

int IoPagetable::reserve(std::uint64_t start, std::uint64_t last, const void* owner) {
  if (area_intersects(start, last) || allowed_intersects(start, last)) return -EADDRINUSE;
  auto pos = std::upper_bound(reserved_.begin(), reserved_.end(), start,
                              [](std::uint64_t s, const Reserved& r) { return s < r.start; });
  reserved_.insert(pos, Reserved{start, last, owner});
  return 0;
}

void IoPagetable::remove_reserved(const void* owner) {
  std::erase_if(reserved_, [owner](const Reserved& r) { return r.owner == owner; });
}

// ---- domains ------------------------------------------------------------------------------

int IoPagetable::check_alignment(std::uint64_t align) const {
  const std::uint64_t mask = align - 1;
  for (const auto& [iova, a] : areas_) {
    if ((a.iova & mask) || (a.length() & mask) || (a.page_offset() & mask)) return -EADDRINUSE;
  }
  return 0;
}

int IoPagetable::recalculate_alignment() {
  std::uint64_t align = disable_large_pages_ ? host_page_size() : 1;
  for (const auto& d : domains_) align = std::max(align, d->min_page_size());
  for (const auto* acc : accesses_) align = std::max(align, acc->iova_alignment);
  if (align > iova_alignment_) {
    if (int rc = check_alignment(align)) return rc;
  }
  iova_alignment_ = align;
  return 0;
}

int IoPagetable::add_domain(const std::shared_ptr<Domain>& domain) {
  // iommufd works in PAGE_SIZE units: a domain must accept PAGE_SIZE IOPTEs.
  const std::uint64_t align = std::max(domain->min_page_size(), iova_alignment_);
  if (align > host_page_size()) return -EINVAL;
  if (align != iova_alignment_) {
    if (int rc = check_alignment(align)) return rc;
  }
  const IommuModel& m = domain->model();
  const void* owner = domain.get();
  int rc = 0;
  if (m.aperture_start != 0) rc = reserve(0, m.aperture_start - 1, owner);
  if (!rc && m.aperture_last != kMax) rc = reserve(m.aperture_last + 1, kMax, owner);
  if (rc) {
    remove_reserved(owner);
    return rc;
  }
  const std::vector<std::shared_ptr<Domain>> one{domain};
  for (auto it = areas_.begin(); it != areas_.end(); ++it) {
    rc = fill_area(it->second, one);
    if (rc) {
      for (auto u = areas_.begin(); u != it; ++u) {
        unfill_area(u->second, one);
        if (domains_.empty()) {
          u->second.pages->unpin(ctx_.kernel, u->second.first_index(), u->second.last_index());
          u->second.pinned = false;
        }
      }
      remove_reserved(owner);
      return rc;
    }
  }
  iova_alignment_ = align;
  domains_.push_back(domain);
  return 0;
}

void IoPagetable::remove_domain(const Domain* domain) {
  auto it = std::find_if(domains_.begin(), domains_.end(),
                         [domain](const auto& d) { return d.get() == domain; });
  if (it == domains_.end()) return;
  std::shared_ptr<Domain> d = *it;
  domains_.erase(it);
  for (auto& [iova, a] : areas_) {
    d->unmap(a.iova, a.length());
    if (domains_.empty() && a.pinned) {
      a.pages->unpin(ctx_.kernel, a.first_index(), a.last_index());
      a.pinned = false;
    }
  }
  remove_reserved(domain);
  recalculate_alignment();  // only ever shrinks here, so it cannot fail
}

int IoPagetable::disable_large_pages() {
  if (disable_large_pages_) return 0;
  // Domains may already hold large IOPTEs for existing areas.
  if (!domains_.empty() && !areas_.empty()) return -EINVAL;
  disable_large_pages_ = true;
  if (int rc = recalculate_alignment()) {
    disable_large_pages_ = false;
    return rc;
  }
  return 0;
}

void IoPagetable::enable_large_pages() {
  disable_large_pages_ = false;
  recalculate_alignment();
}

// ---- accesses ---------------------------------------------------------------------------

int IoPagetable::add_access(IoasAccess* access) {
  accesses_.push_back(access);
  if (int rc = recalculate_alignment()) {
    accesses_.pop_back();
    return rc;
  }
  return 0;
}

void IoPagetable::remove_access(IoasAccess* access) {
  accesses_.erase(std::remove(accesses_.begin(), accesses_.end(), access), accesses_.end());
  recalculate_alignment();  // only ever shrinks here
}

template <class F>
int IoPagetable::for_each_contig(std::uint64_t iova, std::uint64_t last, F&& fn) {
  std::uint64_t cur = iova;
  auto it = areas_.upper_bound(cur);
  if (it == areas_.begin()) return -ENOENT;
  --it;
  while (it != areas_.end() && it->first <= cur && it->second.last >= cur) {
    Area& a = it->second;
    const std::uint64_t l = std::min(last, a.last);
    if (int rc = fn(a, cur, l)) return rc;
    if (l == last) return 0;
    cur = l + 1;
    ++it;
  }
  return -ENOENT;
}

int IoPagetable::access_pin(std::uint64_t iova, std::uint64_t length, bool write,
                            std::vector<AccessPin>* pins, std::vector<std::uint64_t>* vas) {
  if (length == 0) return -EINVAL;
  if (iova + (length - 1) < iova) return -EOVERFLOW;
  const std::uint64_t ps = host_page_size();
  const std::uint64_t last = iova + (length - 1);
  pins->clear();
  vas->clear();
  int rc = for_each_contig(iova, last, [&](Area& a, std::uint64_t cur, std::uint64_t l) {
    // iopt_area_contig_is_aligned: each piece starts on a page, and every piece but the
    // last ends on one.
    if (a.start_byte_at(cur) % ps || (l != last && (a.start_byte_at(l) + 1) % ps)) {
      return -EINVAL;
    }
    if (!(a.prot & (write ? kIommuWrite : kIommuRead))) return -EPERM;
    const std::uint64_t first = a.start_byte_at(cur) / ps, lasti = a.start_byte_at(l) / ps;
    if (int r = a.pages->pin(ctx_.kernel, first, lasti)) return r;
    ++a.num_accesses;
    pins->push_back({a.iova, first, lasti});
    // The user VA of each page (hint() of a user range), for the caller's check.
    for (std::uint64_t i = first; i <= lasti; ++i) vas->push_back(a.pages->hint(i * ps));
    return 0;
  });
  if (rc) {
    access_unpin(*pins);
    pins->clear();
    vas->clear();
  }
  return rc;
}

void IoPagetable::access_unpin(const std::vector<AccessPin>& pins) {
  for (const auto& p : pins) {
    auto it = areas_.find(p.area_iova);
    if (it == areas_.end()) continue;  // cannot happen: unmap waits for accesses
    it->second.pages->unpin(ctx_.kernel, p.first, p.last);
    --it->second.num_accesses;
  }
}

int IoPagetable::access_rw(std::uint64_t iova, void* data, std::uint64_t length, bool write) {
  if (length == 0) return -EINVAL;
  if (iova + (length - 1) < iova) return -EOVERFLOW;
  const std::uint64_t ps = host_page_size();
  auto* bytes = static_cast<unsigned char*>(data);
  return for_each_contig(iova, iova + (length - 1),
                         [&](Area& a, std::uint64_t cur, std::uint64_t l) {
    if (!(a.prot & (write ? kIommuWrite : kIommuRead))) return -EPERM;
    // The pages are pinned for the copy (as iopt_pages_rw_access does when no domain holds
    // them), so memory that GUP cannot reach fails with EFAULT.
    const std::uint64_t first = a.start_byte_at(cur) / ps, lasti = a.start_byte_at(l) / ps;
    if (int r = a.pages->pin(ctx_.kernel, first, lasti)) return r;
    const std::uint64_t va = a.pages->va(a.start_byte_at(cur));
    const std::uint64_t n = l - cur + 1;
    int r = write ? copy_to_user(va, bytes, n) : copy_from_user(bytes, va, n);
    a.pages->unpin(ctx_.kernel, first, lasti);
    bytes += n;
    return r;
  });
}

}  // namespace fastmap::sim
