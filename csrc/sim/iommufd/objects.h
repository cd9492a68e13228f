// The iommufd object table: every object a context creates (IOAS, HWPT, device, selftest
// object) lives here under a u32 id from one namespace. Ids are allocated like the kernel's
// xarray with XA_FLAGS_ALLOC1 and xa_limit_31b: the lowest free id, starting at 1.
//
// Locking: the table belongs to one IommufdCtx and is only touched under its mutex.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>

namespace fastmap::sim {

class IommufdCtx;

enum class ObjType { kIoas, kHwpt, kDevice, kFault, kSelftest, kAccess };

class Object {
 public:
  explicit Object(ObjType type) : type(type) {}
  virtual ~Object() = default;
  Object(const Object&) = delete;
  Object& operator=(const Object&) = delete;

  // Called once the object has left the table (DESTROY, auto-destroy, context release):
  // drop the references this object holds on others.
  virtual void destroy(IommufdCtx& /*ctx*/) {}

  const ObjType type;
  std::uint32_t id = 0;
  // False between creation and iommufd_object_finalize: the id is taken but lookups do
  // not see the object yet (the kernel's XA_ZERO_ENTRY).
  bool finalized = true;
  // References from other objects or from a binding (a HWPT on its IOAS, a device on its
  // HWPT, VFIO's bind on a device). DESTROY answers EBUSY while non-zero.
  int users = 0;
};

class ObjectTable {
 public:
  // The lowest free id for `obj`, or 0 when the 31-bit space is full. Unless `finalized`,
  // the object stays invisible to find/get until finalize().
  std::uint32_t insert(std::shared_ptr<Object> obj, bool finalized = true);
  void finalize(Object& obj) noexcept { obj.finalized = true; }
  // Removes the id (no destroy callback); the object's shared_ptr is returned.
  std::shared_ptr<Object> erase(std::uint32_t id);
  // The finalized object with this id, or nullptr.
  std::shared_ptr<Object> find(std::uint32_t id) const;
  // Includes objects still being created.
  std::shared_ptr<Object> find_any(std::uint32_t id) const;
  bool empty() const noexcept { return objects_.empty(); }
  const std::map<std::uint32_t, std::shared_ptr<Object>>& all() const noexcept {
    return objects_;
  }

  // The object as T when it exists and has T's type, else nullptr (callers say ENOENT).
  template <class T>
  std::shared_ptr<T> get(std::uint32_t id) const {
    auto o = find(id);
    if (!o || o->type != T::kType) return nullptr;
    return std::static_pointer_cast<T>(o);
  }

 private:
  std::map<std::uint32_t, std::shared_ptr<Object>> objects_;
  std::set<std::uint32_t> holes_;  // freed ids below next_
  std::uint32_t next_ = 1;
};

}  // namespace fastmap::sim
