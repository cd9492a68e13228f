#include "preload/trace_ioctls.h"

#include <algorithm>
#include <array>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string_view>

#include "uapi/iommufd.h"
#include "uapi/vfio.h"
#include "uapi/vfio_migration.h"

namespace fastmap::preload {

namespace {

using namespace fastmap::uapi;

// Where a field stands in the line: before the arrow (what the caller passed), after it (what
// the kernel writes back: 0 when the call failed), or after it as it stands either way (in/out
// fields, which keep the caller's value on failure).
enum class Dir : unsigned char { kIn, kOut, kInOut };
enum class Base : unsigned char { kDec, kHex };

struct Shown {
  const char* label;  // nullptr ends a decoder's list
  FieldInfo field;
  Dir dir;
  Base base;
};

// What the argument is: a uAPI struct (shown through its Shown fields), the value itself, a
// pointer to a container fd, or a pointer to a device name.
enum class Arg : unsigned char { kNone, kStruct, kValue, kContainerFd, kString };

struct Decoder {
  unsigned long request;
  const char* name;
  Arg arg = Arg::kNone;
  std::array<Shown, 5> shown{};
  // A figure computed from the struct, shown last after the arrow (0 when the call failed).
  const char* derived_label = nullptr;
  std::uint64_t (*derived)(std::uint64_t arg) = nullptr;
};

void no_such_member() {}  // not constexpr: reaching it in member() fails the build

consteval FieldInfo member(const StructInfo& s, std::string_view name) {
  for (const FieldInfo& f : s.fields) {
    if (name == f.name) return f;
  }
  no_such_member();
  return {};
}

consteval Shown in(const StructInfo& s, const char* label, std::string_view name,
                   Base base = Base::kDec) {
  return {label, member(s, name), Dir::kIn, base};
}
consteval Shown out(const StructInfo& s, const char* label, std::string_view name,
                    Base base = Base::kDec) {
  return {label, member(s, name), Dir::kOut, base};
}
consteval Shown inout(const StructInfo& s, const char* label, std::string_view name,
                      Base base = Base::kDec) {
  return {label, member(s, name), Dir::kInOut, base};
}

constexpr Base kHex = Base::kHex;

// Set bits in the bitmap GET_DIRTY_BITMAP filled in (the caller's memory: same process). The
// dirty count is what the migration figures compare with the device's writes.
std::uint64_t dirty_bits(std::uint64_t arg) {
  iommu_hwpt_get_dirty_bitmap v;
  std::memcpy(&v, reinterpret_cast<const void*>(arg), sizeof v);
  if (v.page_size == 0 || v.data == 0) return 0;
  const std::uint64_t bits = v.length / v.page_size;
  const auto* words = reinterpret_cast<const std::uint64_t*>(static_cast<std::uintptr_t>(v.data));
  std::uint64_t count = 0;
  for (std::uint64_t i = 0; i < bits / 64; ++i) count += __builtin_popcountll(words[i]);
  if (bits % 64) count += __builtin_popcountll(words[bits / 64] & ((1ull << (bits % 64)) - 1));
  return count;
}

constexpr auto& bind = vfio_device_bind_iommufd_info;
constexpr auto& attach = vfio_device_attach_iommufd_pt_info;
constexpr auto& hw_info = iommu_hw_info_info;
constexpr auto& hwpt_alloc = iommu_hwpt_alloc_info;
constexpr auto& map = iommu_ioas_map_info;
constexpr auto& unmap = iommu_ioas_unmap_info;
constexpr auto& ranges = iommu_ioas_iova_ranges_info;
constexpr auto& dma_map = vfio_iommu_type1_dma_map_info;
constexpr auto& dma_unmap = vfio_iommu_type1_dma_unmap_info;
constexpr auto& tracking = iommu_hwpt_set_dirty_tracking_info;
constexpr auto& bitmap = iommu_hwpt_get_dirty_bitmap_info;
constexpr auto& region = vfio_region_info_info;
constexpr auto& irq = vfio_irq_info_info;
constexpr auto& irq_set = vfio_irq_set_info;
constexpr auto& precopy = vfio_precopy_info_info;

constexpr Decoder kDecoders[] = {
    {IOMMU_DESTROY, "IOMMU_DESTROY", Arg::kStruct, {in(iommu_destroy_info, "id", "id")}},
    {IOMMU_IOAS_ALLOC, "IOMMU_IOAS_ALLOC", Arg::kStruct,
     {out(iommu_ioas_alloc_info, "ioas", "out_ioas_id")}},
    {IOMMU_IOAS_ALLOW_IOVAS, "IOMMU_IOAS_ALLOW_IOVAS"},
    {IOMMU_IOAS_COPY, "IOMMU_IOAS_COPY"},
    {IOMMU_IOAS_IOVA_RANGES, "IOMMU_IOAS_IOVA_RANGES", Arg::kStruct,
     {in(ranges, "ioas", "ioas_id"), inout(ranges, "num_iovas", "num_iovas")}},
    {IOMMU_IOAS_MAP, "IOMMU_IOAS_MAP", Arg::kStruct,
     {in(map, "ioas", "ioas_id"), in(map, "flags", "flags", kHex), in(map, "va", "user_va", kHex),
      in(map, "len", "length", kHex), inout(map, "iova", "iova", kHex)}},
    {IOMMU_IOAS_UNMAP, "IOMMU_IOAS_UNMAP", Arg::kStruct,
     {in(unmap, "ioas", "ioas_id"), in(unmap, "iova", "iova", kHex),
      in(unmap, "len", "length", kHex)}},
    {IOMMU_OPTION, "IOMMU_OPTION"},
    {IOMMU_VFIO_IOAS, "IOMMU_VFIO_IOAS"},
    {IOMMU_HWPT_ALLOC, "IOMMU_HWPT_ALLOC", Arg::kStruct,
     {in(hwpt_alloc, "flags", "flags", kHex), in(hwpt_alloc, "dev", "dev_id"),
      in(hwpt_alloc, "pt", "pt_id"), in(hwpt_alloc, "data_type", "data_type"),
      out(hwpt_alloc, "hwpt", "out_hwpt_id")}},
    {IOMMU_GET_HW_INFO, "IOMMU_GET_HW_INFO", Arg::kStruct,
     {in(hw_info, "dev", "dev_id"), out(hw_info, "type", "out_data_type"),
      out(hw_info, "caps", "out_capabilities", kHex)}},
    {IOMMU_HWPT_SET_DIRTY_TRACKING, "IOMMU_HWPT_SET_DIRTY_TRACKING", Arg::kStruct,
     {in(tracking, "hwpt", "hwpt_id"), in(tracking, "flags", "flags", kHex)}},
    {IOMMU_HWPT_GET_DIRTY_BITMAP, "IOMMU_HWPT_GET_DIRTY_BITMAP", Arg::kStruct,
     {in(bitmap, "hwpt", "hwpt_id"), in(bitmap, "flags", "flags", kHex),
      in(bitmap, "iova", "iova", kHex), in(bitmap, "len", "length", kHex)},
     "dirty", dirty_bits},
    {IOMMU_HWPT_INVALIDATE, "IOMMU_HWPT_INVALIDATE"},
    {IOMMU_FAULT_QUEUE_ALLOC, "IOMMU_FAULT_QUEUE_ALLOC"},
    {IOMMU_IOAS_MAP_FILE, "IOMMU_IOAS_MAP_FILE"},
    {IOMMU_VIOMMU_ALLOC, "IOMMU_VIOMMU_ALLOC"},
    {IOMMU_VDEVICE_ALLOC, "IOMMU_VDEVICE_ALLOC"},
    {IOMMU_IOAS_CHANGE_PROCESS, "IOMMU_IOAS_CHANGE_PROCESS"},
    {VFIO_GET_API_VERSION, "VFIO_GET_API_VERSION"},
    {VFIO_CHECK_EXTENSION, "VFIO_CHECK_EXTENSION", Arg::kValue},
    {VFIO_SET_IOMMU, "VFIO_SET_IOMMU", Arg::kValue},
    {VFIO_GROUP_GET_STATUS, "VFIO_GROUP_GET_STATUS"},
    {VFIO_GROUP_SET_CONTAINER, "VFIO_GROUP_SET_CONTAINER", Arg::kContainerFd},
    {VFIO_GROUP_UNSET_CONTAINER, "VFIO_GROUP_UNSET_CONTAINER"},
    {VFIO_GROUP_GET_DEVICE_FD, "VFIO_GROUP_GET_DEVICE_FD", Arg::kString},
    {VFIO_DEVICE_GET_INFO, "VFIO_DEVICE_GET_INFO"},
    {VFIO_DEVICE_GET_REGION_INFO, "VFIO_DEVICE_GET_REGION_INFO", Arg::kStruct,
     {in(region, "index", "index"), out(region, "flags", "flags", kHex),
      out(region, "size", "size", kHex)}},
    {VFIO_DEVICE_GET_IRQ_INFO, "VFIO_DEVICE_GET_IRQ_INFO", Arg::kStruct,
     {in(irq, "index", "index"), out(irq, "flags", "flags", kHex), out(irq, "count", "count")}},
    {VFIO_DEVICE_SET_IRQS, "VFIO_DEVICE_SET_IRQS", Arg::kStruct,
     {in(irq_set, "flags", "flags", kHex), in(irq_set, "index", "index"),
      in(irq_set, "start", "start"), in(irq_set, "count", "count")}},
    {VFIO_DEVICE_RESET, "VFIO_DEVICE_RESET"},
    {VFIO_IOMMU_GET_INFO, "VFIO_IOMMU_GET_INFO"},
    {VFIO_IOMMU_MAP_DMA, "VFIO_IOMMU_MAP_DMA", Arg::kStruct,
     {in(dma_map, "flags", "flags", kHex), in(dma_map, "va", "vaddr", kHex),
      in(dma_map, "iova", "iova", kHex), in(dma_map, "size", "size", kHex)}},
    {VFIO_IOMMU_UNMAP_DMA, "VFIO_IOMMU_UNMAP_DMA", Arg::kStruct,
     {in(dma_unmap, "flags", "flags", kHex), in(dma_unmap, "iova", "iova", kHex),
      in(dma_unmap, "size", "size", kHex)}},
    // The container's VFIO_IOMMU_DIRTY_PAGES has the same number and flags at the same place.
    {VFIO_DEVICE_FEATURE, "VFIO_DEVICE_FEATURE", Arg::kStruct,
     {in(vfio_device_feature_info, "flags", "flags", kHex)}},
    {VFIO_DEVICE_BIND_IOMMUFD, "VFIO_DEVICE_BIND_IOMMUFD", Arg::kStruct,
     {in(bind, "iommufd", "iommufd"), out(bind, "devid", "out_devid")}},
    {VFIO_DEVICE_ATTACH_IOMMUFD_PT, "VFIO_DEVICE_ATTACH_IOMMUFD_PT", Arg::kStruct,
     {inout(attach, "pt_id", "pt_id")}},
    {VFIO_DEVICE_DETACH_IOMMUFD_PT, "VFIO_DEVICE_DETACH_IOMMUFD_PT"},
    {VFIO_MIG_GET_PRECOPY_INFO, "VFIO_MIG_GET_PRECOPY_INFO", Arg::kStruct,
     {out(precopy, "initial_bytes", "initial_bytes"), out(precopy, "dirty_bytes", "dirty_bytes")}},
};

const Decoder* find(unsigned long request) {
  for (const Decoder& d : kDecoders) {
    if (d.request == request) return &d;
  }
  return nullptr;
}

// Appends to a bounded line; `used` stops at the end of the buffer.
struct Line {
  char* s;
  std::size_t n;
  std::size_t used = 0;

  template <class... A>
  void add(const char* fmt, A... a) {
    if (used >= n) return;
    const int k = std::snprintf(s + used, n - used, fmt, a...);
    if (k > 0) used = std::min(used + static_cast<std::size_t>(k), n - 1);
  }
};

void add_field(Line& line, const Shown& f, std::uint64_t arg, bool shown_as_zero) {
  std::uint64_t v = 0;
  if (!shown_as_zero) std::memcpy(&v, reinterpret_cast<const char*>(arg) + f.field.offset,
                                  f.field.size);  // little-endian: the low bytes
  if (f.base == Base::kHex) {
    line.add(" %s=0x%" PRIx64, f.label, v);
  } else if (std::string_view(f.field.type) == "s32") {
    line.add(" %s=%d", f.label, static_cast<std::int32_t>(static_cast<std::uint32_t>(v)));
  } else {
    line.add(" %s=%" PRIu64, f.label, v);
  }
}

void add_struct(Line& line, const Decoder& d, std::uint64_t arg, bool ok) {
  bool arrow = false;
  for (const Shown& f : d.shown) {
    if (!f.label) break;
    if (f.dir != Dir::kIn && !arrow) {
      line.add(" ->");
      arrow = true;
    }
    add_field(line, f, arg, f.dir == Dir::kOut && !ok);
  }
  if (d.derived) {
    if (!arrow) line.add(" ->");
    line.add(" %s=%" PRIu64, d.derived_label, ok ? d.derived(arg) : 0);
  }
}

const char* mig_state_name(std::uint32_t s) {
  static const char* const kNames[] = {"ERROR",    "STOP",        "RUNNING",  "STOP_COPY",
                                       "RESUMING", "RUNNING_P2P", "PRE_COPY", "PRE_COPY_P2P"};
  return s < sizeof kNames / sizeof kNames[0] ? kNames[s] : "?";
}

// MIG_DEVICE_STATE: the state asked for and the data fd that came back (SET), or the state
// read (GET), by name.
void add_mig_state(Line& line, std::uint64_t arg, bool ok) {
  vfio_device_feature f;
  std::memcpy(&f, reinterpret_cast<const void*>(arg), sizeof f);
  const bool set = f.flags & VFIO_DEVICE_FEATURE_SET, get = f.flags & VFIO_DEVICE_FEATURE_GET;
  if ((f.flags & VFIO_DEVICE_FEATURE_MASK) != VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE ||
      (f.flags & VFIO_DEVICE_FEATURE_PROBE) || set == get ||
      f.argsz < sizeof f + sizeof(vfio_device_feature_mig_state)) {
    return;
  }
  vfio_device_feature_mig_state st;
  std::memcpy(&st, reinterpret_cast<const char*>(arg) + sizeof f, sizeof st);
  if (get) {
    line.add(" -> state=%s", ok ? mig_state_name(st.device_state) : "?");
  } else {
    line.add(" state=%s -> data_fd=%d", mig_state_name(st.device_state), ok ? st.data_fd : -1);
  }
}

}  // namespace

const char* ioctl_name(unsigned long request, bool on_device) noexcept {
  if (request == VFIO_DEVICE_FEATURE) {
    return on_device ? "VFIO_DEVICE_FEATURE" : "VFIO_IOMMU_DIRTY_PAGES";
  }
  const Decoder* d = find(request);
  return d ? d->name : nullptr;
}

int ioctl_fields(unsigned long request, std::uint64_t arg, bool ok, char* s,
                 std::size_t n) noexcept {
  const Decoder* d = find(request);
  if (arg == 0 || !d || n == 0) return 0;
  Line line{s, n};
  switch (d->arg) {
    case Arg::kStruct:
      add_struct(line, *d, arg, ok);
      if (request == VFIO_DEVICE_FEATURE) add_mig_state(line, arg, ok);
      break;
    case Arg::kValue:
      line.add(" arg=%" PRIu64, arg);
      break;
    case Arg::kContainerFd: {
      int fd;
      std::memcpy(&fd, reinterpret_cast<const void*>(arg), sizeof fd);
      line.add(" container=%d", fd);
      break;
    }
    case Arg::kString:
      line.add(" \"%.64s\"", reinterpret_cast<const char*>(arg));
      break;
    case Arg::kNone:
      break;
  }
  return static_cast<int>(line.used);
}

}  // namespace fastmap::preload
