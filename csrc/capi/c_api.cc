#include "capi/c_api.h"

#include <cerrno>
#include <new>
#include <span>

#include "engine/map_engine.h"

namespace fastmap::engine {

namespace {

IoasMapper& mapper(fastmap_mapper* m) { return *reinterpret_cast<IoasMapper*>(m); }

// Nothing may unwind through the C ABI: allocation failure is -ENOMEM.
template <class F>
int guarded(F&& f) noexcept {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
}

int c_map(fastmap_mapper* m, uint64_t va, uint64_t length, uint64_t* iova, uint32_t prot,
          int fixed) {
  if (m == nullptr || iova == nullptr) return -EINVAL;
  return guarded([&] {
    std::uint64_t out = 0;
    std::span<const std::uint64_t> fixed_iovas;
    if (fixed) fixed_iovas = {iova, 1};
    BatchError e = mapper(m).map({&va, 1}, {&length, 1}, fixed_iovas, {&out, 1}, prot, {});
    if (e) return -e.errno_value;
    *iova = out;
    return 0;
  });
}

int c_unmap(fastmap_mapper* m, uint64_t iova, uint64_t length) {
  if (m == nullptr) return -EINVAL;
  return guarded([&] {
    BatchError e = mapper(m).unmap({&iova, 1}, {&length, 1});
    return e ? -e.errno_value : 0;
  });
}

int c_translate_iova(fastmap_mapper* m, uint64_t iova, uint64_t* va) {
  if (m == nullptr || va == nullptr) return -EINVAL;
  return guarded([&] {
    std::uint64_t out = 0;
    if (!mapper(m).translate_iova(iova, &out)) return -ENOENT;
    *va = out;
    return 0;
  });
}

int c_translate_va(fastmap_mapper* m, uint64_t va, uint64_t* iova) {
  if (m == nullptr || iova == nullptr) return -EINVAL;
  return guarded([&] {
    std::uint64_t out = 0;
    if (!mapper(m).translate_va(va, &out)) return -ENOENT;
    *iova = out;
    return 0;
  });
}

constexpr fastmap_capi kApi{FASTMAP_CAPI_VERSION, c_map, c_unmap, c_translate_iova,
                            c_translate_va};

}  // namespace

const fastmap_capi* c_api() noexcept { return &kApi; }

}  // namespace fastmap::engine
