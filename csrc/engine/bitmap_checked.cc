#include "engine/bitmap_checked.h"

#include <cerrno>

#include "engine/bitmap_ops.h"

namespace fastmap::engine::bitmap {

namespace {

constexpr bool pow2(std::uint64_t x) noexcept { return x != 0 && (x & (x - 1)) == 0; }

}  // namespace

int check_nbits(std::span<const std::uint64_t> bm, std::uint64_t nbits) noexcept {
  return words_for(nbits) > bm.size() ? -EINVAL : 0;
}

int check_same_length(std::span<const std::uint64_t> dst,
                      std::span<const std::uint64_t> src) noexcept {
  return dst.size() == src.size() ? 0 : -EINVAL;
}

int check_pairs(std::span<const std::uint64_t> pairs) noexcept {
  return pairs.size() % 2 == 0 ? 0 : -EINVAL;
}

int converted_words(std::uint64_t nbits, std::uint64_t from_page, std::uint64_t to_page,
                    std::uint64_t* words) noexcept {
  if (!pow2(from_page) || !pow2(to_page)) return -EINVAL;
  const std::uint64_t bits = converted_nbits(nbits, from_page, to_page);
  if (bits == kAllOnes) return -EINVAL;
  *words = words_for(bits);
  return 0;
}

}  // namespace fastmap::engine::bitmap
