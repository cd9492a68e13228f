// Argument checks for callers outside C++ (the Python bindings): each returns 0, or -EINVAL
// for a call that would make the bitmap_ops functions read or write past a buffer. The
// friendlier checks with messages live in fastmap.bitmap; these only guard memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace fastmap::engine::bitmap {

// nbits fits in bm.
int check_nbits(std::span<const std::uint64_t> bm, std::uint64_t nbits) noexcept;
// dst and src have the same number of words (or_merge).
int check_same_length(std::span<const std::uint64_t> dst,
                      std::span<const std::uint64_t> src) noexcept;
// pairs is a flat list of [first, count] pairs (an even number of words).
int check_pairs(std::span<const std::uint64_t> pairs) noexcept;
// *words = the words a convert() output needs; -EINVAL if a page size is not a power of two
// or the converted bitmap would not be addressable.
int converted_words(std::uint64_t nbits, std::uint64_t from_page, std::uint64_t to_page,
                    std::uint64_t* words) noexcept;

}  // namespace fastmap::engine::bitmap
