// Dirty bitmaps in the kernel's GET_DIRTY_BITMAP layout: little-endian u64 words, LSB first,
// bit i = page i (word i/64, bit i%64).
//
// Everything here works a word at a time with popcount/ctz, and skips whole words that are
// all zeros or all ones, because a migration bitmap is large (64 GiB of guest memory at 4 KiB
// = 2 MiB of bitmap) and mostly one or the other. Bits at or past `nbits` in the last word are
// ignored on input and left zero on output. Nothing here throws, except RangeScan's
// constructor when memory runs out.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

namespace fastmap::engine::bitmap {

inline constexpr std::uint64_t kAllOnes = ~std::uint64_t{0};

// Words needed for nbits bits.
constexpr std::uint64_t words_for(std::uint64_t nbits) noexcept {
  return nbits / 64 + (nbits % 64 != 0);
}

// Words of the bitmap for `length` bytes at `page_size` (a partial last page counts): the
// one definition; fastmap.bitmap.words_for_length is its Python twin, checked against it.
constexpr std::uint64_t words_for_length(std::uint64_t length, std::uint64_t page_size) noexcept {
  return words_for(length / page_size + (length % page_size != 0));
}

// dst |= src, word by word (equal lengths; the caller checks).
void or_merge(std::span<std::uint64_t> dst, std::span<const std::uint64_t> src) noexcept;

// Set bits among the first nbits (nbits <= 64 * bm.size()).
std::uint64_t popcount(std::span<const std::uint64_t> bm, std::uint64_t nbits) noexcept;

// Set bits in every word: one plain pass, the lower bound any whole-bitmap scan can reach.
std::uint64_t count_floor(std::span<const std::uint64_t> bm) noexcept;

// Runs of set bits, found in two passes so that the output can be allocated exactly once
// (a large buffer that is grown and shrunk defeats malloc's reuse, and every call then pays
// page faults for fresh memory). The constructor counts the runs and notes which 64-word
// blocks hold a run edge; write() then visits only those blocks. Between the two the
// bitmap must not change.
class RangeScan {
 public:
  // Scans the first nbits of bm (nbits <= 64 * bm.size()). Allocates the block notes
  // (one bit per 4096 pages); throws std::bad_alloc only for that.
  RangeScan(std::span<const std::uint64_t> bm, std::uint64_t nbits);

  // Number of runs of set bits.
  std::uint64_t count() const noexcept { return count_; }

  // Writes the runs as flat pairs [first_page, page_count, ...] in increasing page order
  // (out.size() == 2 * count()). Adjacent set bits always form one run, so runs never touch.
  void write(std::span<std::uint64_t> out) const noexcept;

  // Words per block: one note covers 4096 pages, and a block stays in L1 between passes.
  static constexpr std::size_t kBlockWords = 64;

 private:
  // Block b's words; the last block is copied into tail_copy with bits past nbits cleared.
  const std::uint64_t* block(std::size_t b, std::uint64_t* tail_copy) const noexcept;
  std::uint64_t carry_into(std::size_t b) const noexcept;

  std::span<const std::uint64_t> bm_;
  std::uint64_t nbits_;
  std::size_t nwords_;
  std::size_t nblocks_;
  std::uint64_t count_ = 0;
  std::unique_ptr<std::uint64_t[]> active_;  // bit b: block b holds a run edge
};

// Sets bits [first, first+count) for every pair of `pairs` (flat [first, count, ...]) in bm,
// a bitmap of nbits (bm.size() == words_for(nbits)). Overlapping pairs are fine. Returns
// the index of the first pair that does not fit in nbits (nothing is changed then), or -1.
long long from_ranges(std::span<const std::uint64_t> pairs, std::span<std::uint64_t> bm,
                      std::uint64_t nbits) noexcept;

// Sets bits [first, first+count) (the caller checks first + count <= 64 * bm.size()).
void set_range(std::span<std::uint64_t> bm, std::uint64_t first, std::uint64_t count) noexcept;

// Re-expresses a bitmap of nbits pages of from_page bytes as one of to_page bytes (both
// powers of two). Coarser: a bit is set if any of its fine pages is. Finer: every fine page
// of a set coarse page is set. `out` holds converted_nbits(...) bits and is overwritten.
std::uint64_t converted_nbits(std::uint64_t nbits, std::uint64_t from_page,
                              std::uint64_t to_page) noexcept;
void convert(std::span<const std::uint64_t> bm, std::uint64_t nbits, std::uint64_t from_page,
             std::uint64_t to_page, std::span<std::uint64_t> out) noexcept;

}  // namespace fastmap::engine::bitmap
