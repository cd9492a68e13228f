// Dirty tracking ioctls: HWPT_SET_DIRTY_TRACKING and HWPT_GET_DIRTY_BITMAP.
//
// GET_DIRTY_BITMAP follows iova_bitmap's windowing: the user bitmap is taken in windows of
// at most 512 pages of bitmap (PAGE_SIZE / sizeof(struct page *)), the first page counted
// from the page the window starts in, so an unaligned bitmap gives a shorter first window.
// Each window's IOVA range is walked over contiguous areas; a hole ends the whole walk
// (the kernel's callback error stops iova_bitmap_for_each and its return value is then
// ignored), so the call still succeeds with the bits found so far. Bits are only ever OR-ed
// into the user's bitmap: each window is collected in a kernel buffer first, and then only
// the span of words that got bits is read, OR-ed and written back, in chunks, through
// copy_from_user/copy_to_user.
#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <vector>

#include "sim/iommufd/ctx.h"
#include "sim/iommufd/hwpt.h"
#include "sim/iommufd/ioctls.h"
#include "sim/user_memory.h"
#include "uapi/iommufd.h"

namespace fastmap::sim {

using namespace fastmap::uapi;

namespace {

constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();

// A run of zero words at least this long splits the read-modify-write of a window, so a
// sparse result does not rewrite the untouched bitmap in between.
constexpr std::size_t kSplitGapWords = 512;

// How many pages from `page` on (at most `max`) could be pinned for writing, like a
// partial pin_user_pages_fast.
std::uint64_t pinnable_pages(std::uint64_t page, std::uint64_t max) {
  const std::uint64_t ps = host_page_size();
  if (check_user_pages(page, max * ps, true) == 0) return max;
  std::uint64_t n = 0;
  while (n < max && check_user_pages(page + n * ps, ps, true) == 0) ++n;
  return n;
}

// OR words[first..last] into the user bitmap at word index `base + first`.
void or_into_user(std::uint64_t data, std::uint64_t base, const std::uint64_t* words,
                  std::size_t first, std::size_t last, std::vector<std::uint64_t>& tmp) {
  const std::size_t n = last - first + 1;
  tmp.resize(n);
  const std::uint64_t uaddr = data + (base + first) * 8;
  // The window's pages were checked to be pinnable; a fault here is a race with munmap and
  // is dropped like a failed walk.
  if (copy_from_user(tmp.data(), uaddr, n * 8)) return;
  for (std::size_t i = 0; i < n; ++i) tmp[i] |= words[first + i];
  copy_to_user(uaddr, tmp.data(), n * 8);
}

void flush_window(std::uint64_t data, std::uint64_t base, std::vector<std::uint64_t>& words,
                  std::size_t nwords, std::vector<std::uint64_t>& tmp) {
  std::size_t i = 0;
  while (i < nwords) {
    while (i < nwords && words[i] == 0) ++i;
    if (i == nwords) break;
    std::size_t first = i, last = i, gap = 0;
    for (++i; i < nwords; ++i) {
      if (words[i]) {
        last = i;
        gap = 0;
      } else if (++gap >= kSplitGapWords) {
        break;
      }
    }
    or_into_user(data, base, words.data(), first, last, tmp);
  }
  std::fill(words.begin(), words.begin() + static_cast<std::ptrdiff_t>(nwords), 0);
}

std::shared_ptr<Hwpt> get_hwpt(IommufdCtx& ctx, std::uint32_t id) {
  return ctx.objects.get<Hwpt>(id);
}

}  // namespace

int iommufd_hwpt_set_dirty_tracking(Ucmd& u) {
  auto& cmd = u.get<iommu_hwpt_set_dirty_tracking>();
  if (cmd.flags & ~IOMMU_HWPT_DIRTY_TRACKING_ENABLE) return -EOPNOTSUPP;
  auto hwpt = get_hwpt(u.ctx, cmd.hwpt_id);
  if (!hwpt) return -ENOENT;
  if (!hwpt->domain->dirty_capable()) return -EOPNOTSUPP;  // no dirty_ops
  // Enabling starts from a clean snapshot: the domain clears every dirty bit first.
  return hwpt->domain->set_dirty_tracking(cmd.flags & IOMMU_HWPT_DIRTY_TRACKING_ENABLE);
}

int iommufd_hwpt_get_dirty_bitmap(Ucmd& u) {
  auto& cmd = u.get<iommu_hwpt_get_dirty_bitmap>();
  if ((cmd.flags & ~IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR) || cmd.reserved) return -EOPNOTSUPP;
  auto hwpt = get_hwpt(u.ctx, cmd.hwpt_id);
  if (!hwpt) return -ENOENT;
  const IoPagetable& iopt = hwpt->ioas->iopt;

  // iommufd_check_iova_range.
  if (cmd.iova + (cmd.length - 1) < cmd.iova) return -EOVERFLOW;
  const std::uint64_t last = cmd.iova + (cmd.length - 1);
  const std::uint64_t align = iopt.iova_alignment();
  if ((cmd.iova & (align - 1)) || ((last + 1) & (align - 1))) return -EINVAL;
  if (!cmd.page_size) return -EINVAL;
  // Alignment is tested with page_size-1 and the bit size is __ffs(page_size), as in the
  // kernel: page_size is not required to be a power of two.
  if ((cmd.iova & (cmd.page_size - 1)) || ((last + 1) & (cmd.page_size - 1))) return -EINVAL;
  if (!hwpt->domain->dirty_capable()) return -EOPNOTSUPP;

  const std::uint64_t ps = host_page_size();
  const unsigned shift = static_cast<unsigned>(std::countr_zero(cmd.page_size));
  const bool no_clear = cmd.flags & IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR;
  // Words of the whole bitmap: iova_bitmap_offset_to_index(length - 1) + 1.
  const unsigned __int128 total_words =
      (static_cast<unsigned __int128>(cmd.length - 1) >> (shift + 6)) + 1;
  const std::uint64_t max_window_pages = ps / 8;

  // A window holds at most max_window_pages pages of bitmap.
  const std::uint64_t max_words = static_cast<std::uint64_t>(
      std::min<unsigned __int128>(total_words, max_window_pages * ps / 8));
  std::vector<std::uint64_t> words(max_words, 0);
  std::vector<std::uint64_t> tmp;
  unsigned __int128 base = 0;  // word index of the window start
  bool first_window = true;
  while (base < total_words) {
    const std::uint64_t addr = cmd.data + static_cast<std::uint64_t>(base) * 8;
    const std::uint64_t pgoff = addr % ps;
    const unsigned __int128 left = total_words - base;
    unsigned __int128 npages = (left * 8 + ps - 1) / ps + (pgoff ? 1 : 0);
    if (npages > max_window_pages) npages = max_window_pages;
    const std::uint64_t pinned = pinnable_pages(addr - pgoff, static_cast<std::uint64_t>(npages));
    if (pinned == 0) {
      if (first_window) return -ENOMEM;  // iova_bitmap_alloc failed
      break;                             // a later window: the walk just stops
    }
    first_window = false;
    const std::uint64_t bytes = pinned * ps - pgoff;
    const std::uint64_t nwords =
        static_cast<std::uint64_t>(std::min<unsigned __int128>(left, (bytes + 7) / 8));

    // This window's IOVA range, clipped to the request.
    const unsigned __int128 off = (base * 64) << shift;
    const std::uint64_t win_start = cmd.iova + static_cast<std::uint64_t>(off);
    const unsigned __int128 span = (static_cast<unsigned __int128>(nwords) * 64) << shift;
    const std::uint64_t win_last =
        static_cast<unsigned __int128>(last - win_start) < span
            ? last
            : win_start + static_cast<std::uint64_t>(span - 1);

    // Locals, so the compiler need not reload them after every store into `words`.
    const std::uint64_t req_iova = cmd.iova;
    const std::uint64_t bit_base = static_cast<std::uint64_t>(base) * 64;
    std::uint64_t* const w = words.data();
    auto set_bits = [w, req_iova, bit_base, shift](std::uint64_t a, std::uint64_t b) {
      const std::uint64_t lo = ((a - req_iova) >> shift) - bit_base;
      const std::uint64_t hi = ((b - req_iova) >> shift) - bit_base;
      const std::uint64_t wl = lo >> 6, wh = hi >> 6;
      const std::uint64_t head = ~0ull << (lo & 63), tail = ~0ull >> (63 - (hi & 63));
      if (wl == wh) {
        w[wl] |= head & tail;
        return;
      }
      w[wl] |= head;
      for (std::uint64_t i = wl + 1; i < wh; ++i) w[i] = ~0ull;
      w[wh] |= tail;
    };

    // Walk the areas contiguously from the window start; a hole ends everything.
    bool hole = false;
    std::uint64_t cur = win_start;
    const Area* a = iopt.area_containing(cur);
    for (;;) {
      if (!a) {
        hole = true;
        break;
      }
      const std::uint64_t l = std::min(win_last, a->last);
      hwpt->domain->read_and_clear_dirty(cur, l - cur + 1, no_clear, set_bits);
      if (l == win_last) break;
      cur = l + 1;
      auto next = iopt.areas().find(cur);
      a = next == iopt.areas().end() ? nullptr : &next->second;
    }
    flush_window(cmd.data, static_cast<std::uint64_t>(base), words, nwords, tmp);
    if (hole) break;
    base += nwords;
  }
  return 0;
}

}  // namespace fastmap::sim
