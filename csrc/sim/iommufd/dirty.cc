// Dirty tracking ioctls: HWPT_SET_DIRTY_TRACKING and HWPT_GET_DIRTY_BITMAP.
//
// GET_DIRTY_BITMAP walks the areas contiguously from `iova`; a hole ends the walk (the
// kernel's callback error is ignored), so the call still succeeds with the bits found so
// far. Since 6.9 the kernel's iova_bitmap pins the user bitmap page by page only when it
// sets bits there, so a bitmap that cannot be written (bad pointer, read-only page) is no
// error: the bits for those pages are lost, while the IOPTE dirty bits are still read and
// cleared. Bits are only ever OR-ed into the user's bitmap: the IOVA range is taken in
// windows of 16 Mi bits collected in a kernel buffer, and then the stretches of words that
// got bits are read, OR-ed and written back with a few large copy_from_user/copy_to_user
// calls per window (page by page where a copy faults).
#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <vector>

#include "sim/iommufd/ctx.h"
#include "sim/iommufd/hwpt.h"
#include "sim/iommufd/ioctls.h"
#include "sim/core/user_memory.h"
#include "uapi/iommufd.h"

namespace fastmap::sim {

using namespace fastmap::uapi;

namespace {

// A block of this many zero words splits the read-modify-write of a window, so a sparse
// result does not rewrite the untouched bitmap in between.
constexpr std::size_t kSplitGapWords = 512;

// Bits collected before they are written out: 2 MiB of bitmap, 64 GiB of IOVA at 4 KiB.
constexpr std::uint64_t kWindowWords = std::uint64_t{1} << 18;

// OR words[first..last] into the user bitmap at word index `base + first`. A stretch whose
// copy faults is redone one user page at a time, so only the unwritable pages lose bits.
void or_into_user(std::uint64_t data, std::uint64_t base, const std::uint64_t* words,
                  std::uint64_t first, std::uint64_t last, std::vector<std::uint64_t>& tmp) {
  const std::size_t n = static_cast<std::size_t>(last - first + 1);  // <= tmp.size()
  const std::uint64_t uaddr = data + (base + first) * 8;
  auto rmw = [&](std::uint64_t addr, std::size_t off, std::size_t bytes) {
    auto* t = reinterpret_cast<unsigned char*>(tmp.data());
    if (copy_from_user(t, addr, bytes)) return -EFAULT;
    const auto* src = reinterpret_cast<const unsigned char*>(words + first) + off;
    for (std::size_t i = 0; i < bytes; ++i) t[i] |= src[i];
    return copy_to_user(addr, t, bytes);
  };
  if (copy_from_user(tmp.data(), uaddr, n * 8) == 0) {
    std::uint64_t* __restrict t = tmp.data();
    const std::uint64_t* __restrict src = words + first;
    for (std::size_t i = 0; i < n; ++i) t[i] |= src[i];
    if (copy_to_user(uaddr, tmp.data(), n * 8) == 0) return;
  }
  const std::uint64_t ps = host_page_size();
  for (std::size_t off = 0; off < n * 8;) {
    const std::uint64_t a = uaddr + off;
    const std::size_t bytes = std::min<std::uint64_t>(n * 8 - off, ps - a % ps);
    rmw(a, off, bytes);  // a page that cannot be written just loses its bits
    off += bytes;
  }
}

// Write words[lo..hi] into the user bitmap at word `base`, and leave those words zero again
// for the next window. The range is taken in blocks of kSplitGapWords: an all-zero block
// ends a read-modify-write run, and runs are trimmed to their first and last non-zero word.
void flush_window(std::uint64_t data, std::uint64_t base, std::uint64_t* __restrict words,
                  std::uint64_t lo, std::uint64_t hi, std::vector<std::uint64_t>& tmp) {
  auto any = [words](std::uint64_t a, std::uint64_t b) {  // OR of words[a, b)
    std::uint64_t acc = 0;
    for (std::uint64_t i = a; i < b; ++i) acc |= words[i];
    return acc != 0;
  };
  auto emit = [&](std::uint64_t first, std::uint64_t last) {
    while (words[first] == 0) ++first;
    while (words[last] == 0) --last;
    or_into_user(data, base, words, first, last, tmp);
    std::fill(words + first, words + last + 1, 0);
  };
  bool open = false;
  std::uint64_t run_first = 0, run_last = 0;
  for (std::uint64_t b = lo; b <= hi; b += kSplitGapWords) {
    const std::uint64_t e = std::min(hi + 1, b + kSplitGapWords);
    if (any(b, e)) {
      if (!open) run_first = b;
      open = true;
      run_last = e - 1;
    } else if (open) {
      emit(run_first, run_last);
      open = false;
    }
  }
  if (open) emit(run_first, run_last);
}

// Where one window's bits go while the domain's dirty runs are walked.
struct WindowSink {
  std::uint64_t* words;     // the window's part of the bitmap
  std::uint64_t req_iova;   // IOVA of bit 0 of the whole bitmap
  std::uint64_t bit_base;   // bit number of words[0] bit 0 in the whole bitmap
  unsigned pshift;          // __ffs(page_size)
  std::uint64_t first;      // the IOVA range being walked: IOPTEs are clipped to it
  std::uint64_t last;
  std::uint64_t touched_lo; // the words that may hold bits
  std::uint64_t touched_hi;
};

void touch(WindowSink& s, std::uint64_t lo_word, std::uint64_t hi_word) {
  s.touched_lo = std::min(s.touched_lo, lo_word);
  s.touched_hi = std::max(s.touched_hi, hi_word);
}

// Set the bits of the bitmap pages holding IOVAs [a, b].
void set_iova_bits(WindowSink& s, std::uint64_t a, std::uint64_t b) {
  const std::uint64_t lo = ((a - s.req_iova) >> s.pshift) - s.bit_base;
  const std::uint64_t hi = ((b - s.req_iova) >> s.pshift) - s.bit_base;
  const std::uint64_t wl = lo >> 6, wh = hi >> 6;
  touch(s, wl, wh);
  const std::uint64_t head = ~0ull << (lo & 63), tail = ~0ull >> (63 - (hi & 63));
  if (wl == wh) {
    s.words[wl] |= head & tail;
    return;
  }
  s.words[wl] |= head;
  for (std::uint64_t i = wl + 1; i < wh; ++i) s.words[i] = ~0ull;
  s.words[wh] |= tail;
}

// OR bits [lo, hi] of src into dst starting at bit dpos, 64 at a time.
void or_bit_block(const std::uint64_t* __restrict src, std::uint64_t lo, std::uint64_t hi,
                  std::uint64_t* __restrict dst, std::uint64_t dpos) {
  const std::uint64_t n = hi - lo + 1;
  if (((dpos ^ lo) & 63) == 0) {
    // Same bit position in both: whole words line up (the usual case of a map whose IOVA
    // is 64 pages aligned relative to the request).
    std::uint64_t sw = lo >> 6, dw = dpos >> 6;
    const std::uint64_t sw_last = hi >> 6;
    const std::uint64_t head = ~0ull << (lo & 63), tail = ~0ull >> (63 - (hi & 63));
    if (sw == sw_last) {
      dst[dw] |= src[sw] & head & tail;
      return;
    }
    dst[dw++] |= src[sw++] & head;
    const std::uint64_t full = sw_last - sw;
    for (std::uint64_t i = 0; i < full; ++i) dst[dw + i] |= src[sw + i];
    dst[dw + full] |= src[sw_last] & tail;
    return;
  }
  const std::uint64_t last_word = hi >> 6;
  for (std::uint64_t k = 0; k < n; k += 64) {
    const std::uint64_t p = lo + k, w = p >> 6;
    const unsigned off = static_cast<unsigned>(p & 63);
    std::uint64_t x = src[w] >> off;
    if (off && w + 1 <= last_word) x |= src[w + 1] << (64 - off);
    if (n - k < 64) x &= (1ull << (n - k)) - 1;
    if (!x) continue;
    const std::uint64_t q = dpos + k, dw = q >> 6;
    const unsigned sh = static_cast<unsigned>(q & 63);
    dst[dw] |= x << sh;
    if (sh && (x >> (64 - sh))) dst[dw + 1] |= x >> (64 - sh);
  }
}

// Domain::for_each_dirty_words callback: one run of equally sized IOPTEs.
void collect_run(void* ctx, std::uint64_t run_iova, unsigned shift, const std::uint64_t* src,
                 std::uint64_t lo, std::uint64_t hi) {
  WindowSink& s = *static_cast<WindowSink*>(ctx);
  if (shift == s.pshift) {
    // One IOPTE per bitmap page, both aligned alike: move whole words.
    const std::uint64_t dpos = ((run_iova + (lo << shift) - s.req_iova) >> shift) - s.bit_base;
    touch(s, dpos >> 6, (dpos + (hi - lo)) >> 6);
    or_bit_block(src, lo, hi, s.words, dpos);
    return;
  }
  if (shift + 1 == s.pshift && ((run_iova - s.req_iova) & ((2ull << shift) - 1)) == 0) {
    // Two IOPTEs per bitmap page (the mock's 2 KiB IOPTEs read at 4 KiB), page aligned:
    // fold each pair of bits into one, 64 IOPTEs into 32 pages at a time. `dbase` is the
    // page number (in this window) of the run's first IOPTE; negative when the run starts
    // before the window, in which case its first words only hold masked-off IOPTEs.
    const __int128 dbase =
        ((static_cast<__int128>(run_iova) - static_cast<__int128>(s.req_iova)) >> s.pshift) -
        static_cast<__int128>(s.bit_base);
    for (std::uint64_t w = lo >> 6; w <= hi >> 6; ++w) {
      std::uint64_t x = src[w];
      if (w == lo >> 6) x &= ~0ull << (lo & 63);
      if (w == hi >> 6) x &= ~0ull >> (63 - (hi & 63));
      if (!x) continue;
      x = (x | (x >> 1)) & 0x5555555555555555ull;  // pair -> its even bit
      x = (x | (x >> 1)) & 0x3333333333333333ull;  // then squeeze the even bits together
      x = (x | (x >> 2)) & 0x0F0F0F0F0F0F0F0Full;
      x = (x | (x >> 4)) & 0x00FF00FF00FF00FFull;
      x = (x | (x >> 8)) & 0x0000FFFF0000FFFFull;
      x = (x | (x >> 16)) & 0x00000000FFFFFFFFull;
      __int128 d = dbase + 32 * static_cast<__int128>(w);
      if (d < 0) {  // the pages before the window are masked off above
        x >>= static_cast<unsigned>(-d);
        d = 0;
      }
      const std::uint64_t dw = static_cast<std::uint64_t>(d) >> 6;
      const unsigned sh = static_cast<unsigned>(d & 63);
      s.words[dw] |= x << sh;
      const std::uint64_t spill = sh ? x >> (64 - sh) : 0;
      if (spill) s.words[dw + 1] |= spill;
      touch(s, dw, spill ? dw + 1 : dw);
    }
    return;
  }
  // Other IOPTE sizes: each dirty IOPTE sets the bits of the pages it covers, clipped to
  // the range (a 2 MiB IOPTE read at 4 KiB sets 512 bits).
  const std::uint64_t size_m1 = (1ull << shift) - 1;
  for (std::uint64_t w = lo >> 6; w <= hi >> 6; ++w) {
    std::uint64_t bits = src[w];
    if (w == lo >> 6) bits &= ~0ull << (lo & 63);
    if (w == hi >> 6) bits &= ~0ull >> (63 - (hi & 63));
    for (; bits; bits &= bits - 1) {
      const std::uint64_t i = w * 64 + static_cast<std::uint64_t>(std::countr_zero(bits));
      const std::uint64_t start = run_iova + (i << shift);
      set_iova_bits(s, std::max(s.first, start), std::min(s.last, start + size_m1));
    }
  }
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

  const unsigned shift = static_cast<unsigned>(std::countr_zero(cmd.page_size));
  const bool no_clear = cmd.flags & IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR;
  // Words of the whole bitmap: iova_bitmap_offset_to_index(length - 1) + 1.
  const unsigned __int128 total_words =
      (static_cast<unsigned __int128>(cmd.length - 1) >> (shift + 6)) + 1;
  const std::uint64_t max_words =
      static_cast<std::uint64_t>(std::min<unsigned __int128>(total_words, kWindowWords));
  // Reused per thread (at most 2 MiB each). `words` is all-zero between windows; both are
  // sized up front so nothing can fail to allocate half way through a window.
  static thread_local std::vector<std::uint64_t> words;
  static thread_local std::vector<std::uint64_t> tmp;
  if (words.size() < max_words) words.resize(max_words, 0);
  if (tmp.size() < max_words) tmp.resize(max_words);
  unsigned __int128 base = 0;  // word index of the window start
  while (base < total_words) {
    const std::uint64_t nwords =
        static_cast<std::uint64_t>(std::min<unsigned __int128>(total_words - base, max_words));

    // This window's IOVA range, clipped to the request.
    const unsigned __int128 off = (base * 64) << shift;
    const std::uint64_t win_start = cmd.iova + static_cast<std::uint64_t>(off);
    const unsigned __int128 span = (static_cast<unsigned __int128>(nwords) * 64) << shift;
    const std::uint64_t win_last =
        static_cast<unsigned __int128>(last - win_start) < span
            ? last
            : win_start + static_cast<std::uint64_t>(span - 1);

    WindowSink sink{words.data(), cmd.iova, static_cast<std::uint64_t>(base) * 64, shift,
                    0, 0, ~0ull, 0};

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
      sink.first = cur;
      sink.last = l;
      hwpt->domain->for_each_dirty_words(cur, l - cur + 1, no_clear, collect_run, &sink);
      if (l == win_last) break;
      cur = l + 1;
      auto next = iopt.areas().find(cur);
      a = next == iopt.areas().end() ? nullptr : &next->second;
    }
    if (sink.touched_lo <= sink.touched_hi) {
      flush_window(cmd.data, static_cast<std::uint64_t>(base), words.data(), sink.touched_lo,
                   sink.touched_hi, tmp);
    }
    if (hole) break;
    base += nwords;
  }
  return 0;
}

}  // namespace fastmap::sim
