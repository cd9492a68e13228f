// TranslationMap: VA <-> IOVA lookups over mapped ranges (what SPDK calls vtophys).
//
// Each mapping is a run of `length` bytes at `va` in the process and at `iova` in an IOAS.
// Two ordered indexes, one per address space, each answer "which mapping holds this
// address" in O(log n). Mappings are disjoint in both spaces, so each VA translates to
// exactly one IOVA and back. Errors are -errno; nothing throws. Not thread-safe, but the
// const lookups may run concurrently with each other.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>

namespace fastmap::engine {

struct Mapping {
  std::uint64_t va;
  std::uint64_t iova;
  std::uint64_t length;
};

class TranslationMap {
 public:
  // -EINVAL: length 0; -EOVERFLOW: either range wraps past 2^64; -EEXIST: the IOVA range
  // overlaps a mapping; -EADDRINUSE: the VA range overlaps a mapping; -ENOMEM.
  int insert(std::uint64_t va, std::uint64_t iova, std::uint64_t length) noexcept;
  // Removes the mapping that starts at `iova`. -ENOENT if none does.
  int remove(std::uint64_t iova, Mapping* removed = nullptr) noexcept;

  std::optional<std::uint64_t> translate_va(std::uint64_t va) const noexcept;
  std::optional<std::uint64_t> translate_iova(std::uint64_t iova) const noexcept;
  // The mapping holding an address, if any.
  std::optional<Mapping> find_va(std::uint64_t va) const noexcept;
  std::optional<Mapping> find_iova(std::uint64_t iova) const noexcept;

  // out[i] = translation of in[i] and found[i] = 1, or out[i] = 0 and found[i] = 0.
  // All spans have the same length. Returns how many were found.
  std::size_t translate_va_bulk(std::span<const std::uint64_t> in, std::span<std::uint64_t> out,
                                std::span<std::uint8_t> found) const noexcept;
  std::size_t translate_iova_bulk(std::span<const std::uint64_t> in,
                                  std::span<std::uint64_t> out,
                                  std::span<std::uint8_t> found) const noexcept;

  std::size_t size() const noexcept { return by_iova_.size(); }

  // Calls f(const Mapping&) for every mapping in IOVA order.
  template <typename F>
  void for_each(F&& f) const {
    for (const auto& [iova, m] : by_iova_) f(m);
  }

  // Both indexes agree and hold disjoint ranges; for tests.
  bool check_invariants() const noexcept;

 private:
  // Each index keeps its own copy of the mapping so a lookup touches one tree only.
  using Index = std::map<std::uint64_t, Mapping>;  // range start -> mapping

  const Mapping* holding_iova(std::uint64_t iova) const noexcept;
  const Mapping* holding_va(std::uint64_t va) const noexcept;

  Index by_iova_;
  Index by_va_;
};

}  // namespace fastmap::engine
