// Layout reflection for uAPI structs.
//
// Each uAPI struct is defined once (iommufd.h, vfio.h, iommufd_test.h). Right after it,
// FM_UAPI_LAYOUT lists every member with the byte offset the kernel header documents. The
// macro static_asserts the size and each offset, and keeps the list as a constexpr table
// that the Python layer reads to build its ctypes mirrors, so Python never carries a second
// hand-written copy of a layout.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>

namespace fastmap::uapi {

using u8 = std::uint8_t;
using u16 = std::uint16_t;
using u32 = std::uint32_t;
using u64 = std::uint64_t;
using s32 = std::int32_t;

// What a field holds: a scalar ("u32"), an array of scalars, or a nested struct/union that
// is registered under its own name.
struct FieldInfo {
  const char* name;
  std::size_t offset;     // where the compiler put it
  std::size_t expected;   // where the kernel header says it is
  std::size_t size;
  const char* type;       // "u8" "u16" "u32" "u64" "s32", or a registered struct name
  std::size_t count;      // 0 for a plain field, N for T[N]
};

struct StructInfo {
  const char* name;
  std::size_t size;
  bool is_union;
  std::span<const FieldInfo> fields;
};

template <class T>
consteval const char* type_name() {
  if constexpr (std::is_same_v<T, u8>) return "u8";
  else if constexpr (std::is_same_v<T, u16>) return "u16";
  else if constexpr (std::is_same_v<T, u32>) return "u32";
  else if constexpr (std::is_same_v<T, u64>) return "u64";
  else if constexpr (std::is_same_v<T, s32>) return "s32";
  else return T::kUapiName;  // a nested uAPI struct names itself
}

template <class T>
consteval FieldInfo field(const char* name, std::size_t offset, std::size_t expected) {
  if constexpr (std::is_array_v<T>) {
    return {name, offset, expected, sizeof(T), type_name<std::remove_extent_t<T>>(),
            std::extent_v<T>};
  } else {
    return {name, offset, expected, sizeof(T), type_name<T>(), 0};
  }
}

template <std::size_t N>
consteval bool offsets_match(const std::array<FieldInfo, N>& fields) {
  for (const auto& f : fields) {
    if (f.offset != f.expected) return false;
  }
  return true;
}

}  // namespace fastmap::uapi

// FM_F(member, documented_offset), used only inside FM_UAPI_LAYOUT.
#define FM_F(f, off) \
  ::fastmap::uapi::field<decltype(Self::f)>(#f, offsetof(Self, f), (off))

#define FM_UAPI_LAYOUT_(S, SIZE, IS_UNION, ...)                                          \
  static_assert(sizeof(S) == (SIZE), "sizeof(" #S ") is not " #SIZE);                   \
  static_assert(std::is_standard_layout_v<S> && std::is_trivially_copyable_v<S>);        \
  inline constexpr auto S##_fields = [] {                                                \
    using Self = S;                                                                      \
    return std::array{__VA_ARGS__};                                                      \
  }();                                                                                   \
  static_assert(::fastmap::uapi::offsets_match(S##_fields),                              \
                #S ": a member is not at the offset the kernel header documents");       \
  inline constexpr ::fastmap::uapi::StructInfo S##_info{#S, sizeof(S), IS_UNION, S##_fields};

#define FM_UAPI_LAYOUT(S, SIZE, ...) FM_UAPI_LAYOUT_(S, SIZE, false, __VA_ARGS__)
#define FM_UAPI_UNION_LAYOUT(S, SIZE, ...) FM_UAPI_LAYOUT_(S, SIZE, true, __VA_ARGS__)
