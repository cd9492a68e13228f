#include "engine/translation.h"

#include <cerrno>
#include <iterator>
#include <new>

namespace fastmap::engine {

namespace {

// Whether [start, last] meets any key range of an index ordered by start; `last_of` gives a
// stored entry's last byte.
template <typename Index, typename LastOf>
bool overlaps(const Index& index, std::uint64_t start, std::uint64_t last, LastOf last_of) {
  auto it = index.upper_bound(last);  // first entry starting after `last`
  if (it == index.begin()) return false;
  --it;  // the last entry starting at or before `last`
  return last_of(*it) >= start;
}

}  // namespace

int TranslationMap::insert(std::uint64_t va, std::uint64_t iova, std::uint64_t length) noexcept {
  if (length == 0) return -EINVAL;
  const std::uint64_t span = length - 1;
  if (span > ~std::uint64_t{0} - va || span > ~std::uint64_t{0} - iova) return -EOVERFLOW;
  if (overlaps(by_iova_, iova, iova + span,
               [](const auto& e) { return e.second.iova + (e.second.length - 1); }))
    return -EEXIST;
  if (overlaps(by_va_, va, va + span,
               [](const auto& e) { return e.second.va + (e.second.length - 1); }))
    return -EADDRINUSE;
  try {
    const auto it = by_iova_.emplace(iova, Mapping{va, iova, length}).first;
    try {
      by_va_.emplace(va, Mapping{va, iova, length});
    } catch (const std::bad_alloc&) {
      by_iova_.erase(it);
      return -ENOMEM;
    }
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
  return 0;
}

int TranslationMap::remove(std::uint64_t iova, Mapping* removed) noexcept {
  auto it = by_iova_.find(iova);
  if (it == by_iova_.end()) return -ENOENT;
  if (removed) *removed = it->second;
  by_va_.erase(it->second.va);
  by_iova_.erase(it);
  return 0;
}

const Mapping* TranslationMap::holding_iova(std::uint64_t iova) const noexcept {
  auto it = by_iova_.upper_bound(iova);
  if (it == by_iova_.begin()) return nullptr;
  const Mapping& m = std::prev(it)->second;
  return iova - m.iova <= m.length - 1 ? &m : nullptr;
}

const Mapping* TranslationMap::holding_va(std::uint64_t va) const noexcept {
  auto it = by_va_.upper_bound(va);
  if (it == by_va_.begin()) return nullptr;
  const Mapping& m = std::prev(it)->second;
  return va - m.va <= m.length - 1 ? &m : nullptr;
}

std::optional<std::uint64_t> TranslationMap::translate_va(std::uint64_t va) const noexcept {
  const Mapping* m = holding_va(va);
  if (!m) return std::nullopt;
  return m->iova + (va - m->va);
}

std::optional<std::uint64_t> TranslationMap::translate_iova(std::uint64_t iova) const noexcept {
  const Mapping* m = holding_iova(iova);
  if (!m) return std::nullopt;
  return m->va + (iova - m->iova);
}

std::optional<Mapping> TranslationMap::find_va(std::uint64_t va) const noexcept {
  const Mapping* m = holding_va(va);
  return m ? std::optional<Mapping>(*m) : std::nullopt;
}

std::optional<Mapping> TranslationMap::find_iova(std::uint64_t iova) const noexcept {
  const Mapping* m = holding_iova(iova);
  return m ? std::optional<Mapping>(*m) : std::nullopt;
}

// Consecutive addresses usually fall in the same mapping (the pages of one buffer), so the
// bulk lookups first try the mapping that answered the previous one.
std::size_t TranslationMap::translate_va_bulk(std::span<const std::uint64_t> in,
                                              std::span<std::uint64_t> out,
                                              std::span<std::uint8_t> found) const noexcept {
  std::size_t hits = 0;
  const Mapping* m = nullptr;
  for (std::size_t i = 0; i < in.size(); ++i) {
    const std::uint64_t va = in[i];
    if (!m || va - m->va > m->length - 1) m = holding_va(va);
    out[i] = m ? m->iova + (va - m->va) : 0;
    found[i] = m != nullptr;
    hits += m != nullptr;
  }
  return hits;
}

std::size_t TranslationMap::translate_iova_bulk(std::span<const std::uint64_t> in,
                                                std::span<std::uint64_t> out,
                                                std::span<std::uint8_t> found) const noexcept {
  std::size_t hits = 0;
  const Mapping* m = nullptr;
  for (std::size_t i = 0; i < in.size(); ++i) {
    const std::uint64_t iova = in[i];
    if (!m || iova - m->iova > m->length - 1) m = holding_iova(iova);
    out[i] = m ? m->va + (iova - m->iova) : 0;
    found[i] = m != nullptr;
    hits += m != nullptr;
  }
  return hits;
}

bool TranslationMap::check_invariants() const noexcept {
  if (by_va_.size() != by_iova_.size()) return false;
  bool first = true;
  std::uint64_t prev_last = 0;
  for (const auto& [iova, m] : by_iova_) {
    if (m.iova != iova || m.length == 0) return false;
    if (!first && prev_last >= m.iova) return false;
    first = false;
    prev_last = m.iova + (m.length - 1);
    if (by_va_.find(m.va) == by_va_.end()) return false;
  }
  first = true;
  for (const auto& [va, m] : by_va_) {
    auto it = by_iova_.find(m.iova);
    if (m.va != va || it == by_iova_.end() || it->second.va != va ||
        it->second.length != m.length)
      return false;
    if (!first && prev_last >= va) return false;
    first = false;
    prev_last = va + (m.length - 1);
  }
  return true;
}

}  // namespace fastmap::engine
