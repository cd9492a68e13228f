#include "engine/bitmap_ops.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

// The hot loops are compiled several times and picked at load time (an ifunc), because the
// build targets baseline x86-64, where __builtin_popcountll is a library call, not POPCNT.
#if defined(__x86_64__) && defined(__has_attribute)
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

// The bitmap is scanned in chunks that stay in L1: one pass counts the runs that start in the
// chunk (so the output can grow before it is written), a second pass writes them.
constexpr std::size_t kChunkWords = 2048;

// Run starts in p[0..n), the word before p[0] having top bit `carry`. *edges is non-zero if
// any run starts or ends there. The previous word is re-read instead of carried so that the
// loop has no dependency between iterations.
FM_MULTIVERSION
std::uint64_t count_starts(const std::uint64_t* p, std::size_t n, std::uint64_t carry,
                           std::uint64_t* edges) noexcept {
  std::uint64_t starts = 0;
  std::uint64_t any = 0;
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
// pairs. *starts/*ends count the pairs whose first/count are written; a run open at the end
// of the chunk gets its count in a later chunk.
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
    // Starts first: the run an end closes started earlier in this word or before it.
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

void Runs::Free::operator()(std::uint64_t* p) const noexcept { std::free(p); }

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

Runs to_ranges(std::span<const std::uint64_t> bm, std::uint64_t nbits, bool* ok) noexcept {
  *ok = true;
  Runs runs;
  const std::size_t nw = words_for(nbits);
  if (nw == 0) return runs;
  // Full words are read in place; the last word is masked into a copy.
  const std::size_t full = nbits % 64 ? nw - 1 : nw;
  const std::uint64_t last_masked = bm[nw - 1] & tail_mask(nbits);
  const std::uint64_t max_runs = nbits / 2 + 1;

  std::uint64_t* out = nullptr;
  std::size_t capacity = 0;
  std::size_t starts = 0, ends = 0;
  std::uint64_t carry = 0;
  for (std::size_t begin = 0; begin < nw; begin += kChunkWords) {
    const std::size_t end = std::min(nw, begin + kChunkWords);
    const std::size_t in_place = std::min(end, full) - begin;
    const std::uint64_t* chunk = bm.data() + begin;
    std::uint64_t edges = 0, tail_edges = 0;
    std::uint64_t need = count_starts(chunk, in_place, carry, &edges);
    const std::uint64_t carry_tail = in_place ? chunk[in_place - 1] >> 63 : carry;
    const bool has_tail = end > full;
    if (has_tail) need += count_starts(&last_masked, 1, carry_tail, &tail_edges);
    if ((edges | tail_edges) == 0) {
      carry = has_tail ? last_masked >> 63 : carry_tail;
      continue;
    }
    if (starts + need > capacity) {
      // Grow towards what the density seen so far predicts for the whole bitmap.
      const std::uint64_t seen = starts + need;
      const double predicted = static_cast<double>(seen) * static_cast<double>(nw) /
                               static_cast<double>(end);
      const double padded = predicted * 1.125 + 1024.0;
      const std::uint64_t want = padded >= static_cast<double>(max_runs)
                                     ? max_runs
                                     : std::max(seen, static_cast<std::uint64_t>(padded));
      auto* grown = static_cast<std::uint64_t*>(std::realloc(out, want * 2 * sizeof *out));
      if (grown == nullptr) {
        std::free(out);
        *ok = false;
        return Runs{};
      }
      out = grown;
      capacity = want;
    }
    write_runs(chunk, in_place, 64 * begin, carry, out, &starts, &ends);
    if (has_tail) write_runs(&last_masked, 1, 64 * full, carry_tail, out, &starts, &ends);
    carry = has_tail ? last_masked >> 63 : carry_tail;
  }
  if (carry) {
    out[2 * ends + 1] = nbits - out[2 * ends];
    ++ends;
  }
  runs.count = starts;
  if (starts == 0) {
    std::free(out);
    return runs;
  }
  // Shrinking never moves data on glibc (in place on the heap, mremap for mmapped blocks).
  auto* fitted = static_cast<std::uint64_t*>(std::realloc(out, starts * 2 * sizeof *out));
  runs.data.reset(fitted ? fitted : out);
  return runs;
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
