#include "engine/bitmap_ops.h"

#include <algorithm>

// The hot loops are compiled several times and picked at load time (an ifunc), because the
// build targets baseline x86-64, where __builtin_popcountll is a library call, not POPCNT.
// Not under TSan: the ifunc resolver runs during relocation, before the TSan runtime is
// initialized, and its instrumented prologue crashes there.
#if defined(__x86_64__) && defined(__has_attribute) && !defined(__SANITIZE_THREAD__)
#if __has_attribute(target_clones)
#define FM_MULTIVERSION __attribute__((target_clones("default", "popcnt", "arch=x86-64-v3")))
#endif
#endif
#ifndef FM_MULTIVERSION
#define FM_MULTIVERSION
#endif

namespace fastmap::engine::bitmap {

namespace {

// The bits of the last word that belong to the bitmap.
constexpr std::uint64_t tail_mask(std::uint64_t nbits) noexcept {
  return nbits % 64 ? (std::uint64_t{1} << (nbits % 64)) - 1 : kAllOnes;
}

// Runs are found through their edges: with prev = the word shifted up by one and the previous
// word's top bit shifted in, `w & ~prev` marks the first bit of each run and `~w & prev` the
// first clear bit after one. Edges are independent per word, so a word costs a few ALU ops
// plus one ctz per run edge, and words without edges (all zeros or all ones inside a run)
// cost nothing else.
constexpr std::uint64_t shifted_in(std::uint64_t w, std::uint64_t carry) noexcept {
  return (w << 1) | carry;
}

// Run starts in p[0..n), the word before p[0] having top bit `carry`. *edges is non-zero if
// any run starts or ends there. The previous word is re-read instead of carried so that the
// loop has no dependency between iterations.
FM_MULTIVERSION
std::uint64_t count_starts(const std::uint64_t* p, std::size_t n, std::uint64_t carry,
                           std::uint64_t* edges) noexcept {
  std::uint64_t starts = 0;
  std::uint64_t any = 0;
  *edges = 0;
  if (n == 0) return 0;
  std::uint64_t prev = shifted_in(p[0], carry);
  starts += static_cast<std::uint64_t>(__builtin_popcountll(p[0] & ~prev));
  any |= p[0] ^ prev;
  for (std::size_t i = 1; i < n; ++i) {
    prev = shifted_in(p[i], p[i - 1] >> 63);
    starts += static_cast<std::uint64_t>(__builtin_popcountll(p[i] & ~prev));
    any |= p[i] ^ prev;
  }
  *edges = any;
  return starts;
}

// Writes the runs of p[0..n) (bit 0 of p[0] is page `base`) into out as [first, count]
// pairs. *starts/*ends count the pairs whose first/count are written; a run still open at
// the end of p gets its count from a later call.
FM_MULTIVERSION
void write_runs(const std::uint64_t* p, std::size_t n, std::uint64_t base, std::uint64_t carry,
                std::uint64_t* out, std::size_t* starts, std::size_t* ends) noexcept {
  std::size_t ns = *starts;
  std::size_t ne = *ends;
  for (std::size_t i = 0; i < n; ++i, base += 64) {
    const std::uint64_t w = p[i];
    const std::uint64_t prev = shifted_in(w, carry);
    carry = w >> 63;
    std::uint64_t s = w & ~prev;
    std::uint64_t e = ~w & prev;
    if ((s | e) == 0) continue;
    // Starts first: the run an end closes started earlier in this word or before it, so its
    // first page is already in out[2k] when the count is computed from it.
    for (; s != 0; s &= s - 1) {
      out[2 * ns++] = base + static_cast<std::uint64_t>(__builtin_ctzll(s));
    }
    for (; e != 0; e &= e - 1) {
      const std::size_t k = ne++;
      out[2 * k + 1] = base + static_cast<std::uint64_t>(__builtin_ctzll(e)) - out[2 * k];
    }
  }
  *starts = ns;
  *ends = ne;
}

// Calls f(first, count) for each run of set bits among the first nbits, in order.
template <class F>
void for_each_run(std::span<const std::uint64_t> bm, std::uint64_t nbits, F&& f) {
  const std::size_t nw = words_for(nbits);
  std::uint64_t carry = 0;
  std::uint64_t start = 0;
  for (std::size_t i = 0; i < nw; ++i) {
    const std::uint64_t w = i + 1 == nw ? bm[i] & tail_mask(nbits) : bm[i];
    // Edges alternate start, end, start, ...; `carry` says which comes next.
    std::uint64_t x = w ^ shifted_in(w, carry);
    for (; x != 0; x &= x - 1) {
      const std::uint64_t bit = 64 * i + static_cast<std::uint64_t>(__builtin_ctzll(x));
      if (carry) {
        f(start, bit - start);
      } else {
        start = bit;
      }
      carry ^= 1;
    }
    carry = w >> 63;
  }
  if (carry) f(start, nbits - start);
}

}  // namespace

FM_MULTIVERSION
void or_merge(std::span<std::uint64_t> dst, std::span<const std::uint64_t> src) noexcept {
  std::uint64_t* d = dst.data();
  const std::uint64_t* s = src.data();
  const std::size_t n = std::min(dst.size(), src.size());
  for (std::size_t i = 0; i < n; ++i) d[i] |= s[i];
}

FM_MULTIVERSION
std::uint64_t count_floor(std::span<const std::uint64_t> bm) noexcept {
  // Four accumulators so that popcount latency overlaps.
  std::uint64_t c0 = 0, c1 = 0, c2 = 0, c3 = 0;
  const std::uint64_t* p = bm.data();
  const std::size_t n = bm.size();
  std::size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    c0 += static_cast<std::uint64_t>(__builtin_popcountll(p[i]));
    c1 += static_cast<std::uint64_t>(__builtin_popcountll(p[i + 1]));
    c2 += static_cast<std::uint64_t>(__builtin_popcountll(p[i + 2]));
    c3 += static_cast<std::uint64_t>(__builtin_popcountll(p[i + 3]));
  }
  for (; i < n; ++i) c0 += static_cast<std::uint64_t>(__builtin_popcountll(p[i]));
  return c0 + c1 + c2 + c3;
}

std::uint64_t popcount(std::span<const std::uint64_t> bm, std::uint64_t nbits) noexcept {
  const std::size_t nw = words_for(nbits);
  if (nw == 0) return 0;
  const std::uint64_t last = bm[nw - 1] & tail_mask(nbits);
  return count_floor(bm.first(nw - 1)) + static_cast<std::uint64_t>(__builtin_popcountll(last));
}

namespace {

// Whether a block of kBlockWords words holds a run edge, given the top bit of the word
// before it. A block whose words are neither all zeros nor all ones holds a 0/1 transition;
// a uniform block holds an edge only at its first bit. The AND/OR reductions vectorize,
// which is what lets a bitmap that is mostly one long run be scanned at memory speed.
template <std::size_t N>
bool has_edge(const std::uint64_t* p, std::uint64_t carry) noexcept {
  std::uint64_t all = kAllOnes, any = 0;
  for (std::size_t i = 0; i < N; ++i) {
    all &= p[i];
    any |= p[i];
  }
  if (any == 0) return carry != 0;
  if (all == kAllOnes) return carry == 0;
  return true;
}

// Counts the runs starting in whole blocks p[0 .. nblocks * kWords) and sets bit b of
// `active` for every block b that holds an edge.
FM_MULTIVERSION
std::uint64_t scan_blocks(const std::uint64_t* p, std::size_t nblocks,
                          std::uint64_t* active) noexcept {
  constexpr std::size_t kWords = RangeScan::kBlockWords;
  std::uint64_t runs = 0;
  for (std::size_t b = 0; b < nblocks; ++b) {
    const std::uint64_t* q = p + b * kWords;
    const std::uint64_t carry = b ? q[-1] >> 63 : 0;
    if (!has_edge<kWords>(q, carry)) continue;
    active[b / 64] |= std::uint64_t{1} << (b % 64);
    std::uint64_t edges;
    runs += count_starts(q, kWords, carry, &edges);
  }
  return runs;
}

}  // namespace

RangeScan::RangeScan(std::span<const std::uint64_t> bm, std::uint64_t nbits)
    : bm_(bm),
      nbits_(nbits),
      nwords_(words_for(nbits)),
      nblocks_((nwords_ + kBlockWords - 1) / kBlockWords),
      active_(new std::uint64_t[(nblocks_ + 63) / 64]()) {
  if (nblocks_ == 0) return;
  // Whole blocks are read in place; the last block (it holds the masked last word) is copied.
  const std::size_t whole = nblocks_ - 1;
  count_ = scan_blocks(bm_.data(), whole, active_.get());
  std::uint64_t tail[kBlockWords];
  const std::uint64_t* last = block(whole, tail);
  const std::uint64_t carry = carry_into(whole);
  std::uint64_t edges = 0;
  count_ += count_starts(last, kBlockWords, carry, &edges);
  if (edges) active_[whole / 64] |= std::uint64_t{1} << (whole % 64);
}

const std::uint64_t* RangeScan::block(std::size_t b, std::uint64_t* tail_copy) const noexcept {
  const std::size_t first = b * kBlockWords;
  if (b + 1 < nblocks_) return bm_.data() + first;
  const std::size_t n = nwords_ - first;
  std::copy_n(bm_.data() + first, n, tail_copy);
  tail_copy[n - 1] &= tail_mask(nbits_);
  std::fill(tail_copy + n, tail_copy + kBlockWords, 0);
  return tail_copy;
}

std::uint64_t RangeScan::carry_into(std::size_t b) const noexcept {
  return b ? bm_[b * kBlockWords - 1] >> 63 : 0;
}

void RangeScan::write(std::span<std::uint64_t> out) const noexcept {
  std::size_t starts = 0, ends = 0;
  std::uint64_t tail[kBlockWords];
  for (std::size_t w = 0; w < (nblocks_ + 63) / 64; ++w) {
    for (std::uint64_t bits = active_[w]; bits != 0; bits &= bits - 1) {
      const std::size_t b = 64 * w + static_cast<std::size_t>(__builtin_ctzll(bits));
      write_runs(block(b, tail), kBlockWords, 64 * kBlockWords * b, carry_into(b), out.data(),
                 &starts, &ends);
    }
  }
  // A run reaching the last bit has no end edge inside the bitmap.
  if (ends < starts) out[2 * ends + 1] = nbits_ - out[2 * ends];
}

void set_range(std::span<std::uint64_t> bm, std::uint64_t first, std::uint64_t count) noexcept {
  if (count == 0) return;
  const std::uint64_t last = first + count - 1;
  const std::uint64_t wf = first / 64, wl = last / 64;
  const std::uint64_t head = kAllOnes << (first % 64);
  const std::uint64_t tail = kAllOnes >> (63 - last % 64);
  if (wf == wl) {
    bm[wf] |= head & tail;
    return;
  }
  bm[wf] |= head;
  std::fill(bm.begin() + static_cast<std::ptrdiff_t>(wf + 1),
            bm.begin() + static_cast<std::ptrdiff_t>(wl), kAllOnes);
  bm[wl] |= tail;
}

long long from_ranges(std::span<const std::uint64_t> pairs, std::span<std::uint64_t> bm,
                      std::uint64_t nbits) noexcept {
  const std::size_t n = pairs.size() / 2;
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint64_t first = pairs[2 * i], count = pairs[2 * i + 1];
    if (first > nbits || count > nbits - first) return static_cast<long long>(i);
  }
  for (std::size_t i = 0; i < n; ++i) set_range(bm, pairs[2 * i], pairs[2 * i + 1]);
  return -1;
}

std::uint64_t converted_nbits(std::uint64_t nbits, std::uint64_t from_page,
                              std::uint64_t to_page) noexcept {
  if (to_page >= from_page) {
    const std::uint64_t r = to_page / from_page;
    return nbits / r + (nbits % r != 0);
  }
  std::uint64_t out;
  if (__builtin_mul_overflow(nbits, from_page / to_page, &out)) return kAllOnes;
  return out;
}

namespace {

// Coarsening by r >= 64 fine pages per coarse page: r/64 whole words per coarse bit.
FM_MULTIVERSION
void coarsen_words(const std::uint64_t* p, std::size_t nw, std::uint64_t words_per_bit,
                   std::uint64_t* out) noexcept {
  std::size_t bit = 0;
  for (std::size_t i = 0; i < nw; i += words_per_bit, ++bit) {
    const std::size_t end = std::min<std::size_t>(nw, i + words_per_bit);
    std::uint64_t any = 0;
    for (std::size_t j = i; j < end; ++j) any |= p[j];
    out[bit / 64] |= std::uint64_t{any != 0} << (bit % 64);
  }
}

// Coarsening by r in {2, 4, ..., 32}: each fine word yields 64/r coarse bits. Folding ORs each
// r-bit group into its lowest bit; the set group bits are then packed down.
void coarsen_bits(const std::uint64_t* p, std::size_t nw, unsigned r, std::uint64_t* out) noexcept {
  std::uint64_t groups = 0;  // bit g*r set for every group g
  for (unsigned g = 0; g < 64; g += r) groups |= std::uint64_t{1} << g;
  const unsigned per_word = 64 / r;
  for (std::size_t i = 0; i < nw; ++i) {
    std::uint64_t x = p[i];
    if (x == 0) continue;
    for (unsigned s = 1; s < r; s <<= 1) x |= x >> s;
    x &= groups;
    std::uint64_t packed = 0;
    for (; x != 0; x &= x - 1) {
      packed |= std::uint64_t{1} << (static_cast<unsigned>(__builtin_ctzll(x)) / r);
    }
    const std::uint64_t bit = i * per_word;
    out[bit / 64] |= packed << (bit % 64);
  }
}

}  // namespace

void convert(std::span<const std::uint64_t> bm, std::uint64_t nbits, std::uint64_t from_page,
             std::uint64_t to_page, std::span<std::uint64_t> out) noexcept {
  std::fill(out.begin(), out.end(), 0);
  const std::size_t nw = words_for(nbits);
  if (nw == 0) return;
  if (to_page <= from_page) {
    // Same size or finer: each run of coarse pages is one run of fine pages.
    const std::uint64_t r = from_page / to_page;
    for_each_run(bm, nbits, [&](std::uint64_t first, std::uint64_t count) {
      set_range(out, first * r, count * r);
    });
    return;
  }
  const std::uint64_t r = to_page / from_page;
  // The last word is masked so that bits past nbits do not mark a coarse page dirty.
  const std::uint64_t last = bm[nw - 1] & tail_mask(nbits);
  if (r >= 64) {
    const std::uint64_t wpb = r / 64;
    const std::size_t head = (nw - 1) / wpb * wpb;  // words before the last coarse bit's group
    coarsen_words(bm.data(), head, wpb, out.data());
    std::uint64_t any = last;
    for (std::size_t j = head; j + 1 < nw; ++j) any |= bm[j];
    const std::uint64_t bit = head / wpb;
    out[bit / 64] |= std::uint64_t{any != 0} << (bit % 64);
  } else {
    coarsen_bits(bm.data(), nw - 1, static_cast<unsigned>(r), out.data());
    std::uint64_t tmp = 0;
    coarsen_bits(&last, 1, static_cast<unsigned>(r), &tmp);
    const std::uint64_t bit = (nw - 1) * (64 / r);
    out[bit / 64] |= tmp << (bit % 64);
  }
}

}  // namespace fastmap::engine::bitmap
