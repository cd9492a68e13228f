#include "sim/iommufd/objects.h"

#include <cerrno>

#include "sim/core/fail_nth.h"

namespace fastmap::sim {

namespace {
constexpr std::uint32_t kMaxId = 0x7fffffff;  // xa_limit_31b
}

std::uint32_t ObjectTable::insert(std::shared_ptr<Object> obj, bool finalized) {
  std::uint32_t id;
  if (!holes_.empty()) {
    id = *holes_.begin();
    holes_.erase(holes_.begin());
  } else {
    if (next_ > kMaxId) return 0;
    id = next_++;
  }
  obj->id = id;
  obj->finalized = finalized;
  objects_.emplace(id, std::move(obj));
  return id;
}

int ObjectTable::add(std::shared_ptr<Object> obj, bool finalized) {
  if (should_fail()) return -ENOMEM;
  return insert(std::move(obj), finalized) ? 0 : -ENOSPC;
}

std::shared_ptr<Object> ObjectTable::erase(std::uint32_t id) {
  auto it = objects_.find(id);
  if (it == objects_.end()) return nullptr;
  auto obj = std::move(it->second);
  objects_.erase(it);
  if (id + 1 == next_) {
    // Shrink instead of remembering a hole at the top, so holes_ stays small.
    --next_;
    while (!holes_.empty() && *holes_.rbegin() + 1 == next_) {
      holes_.erase(std::prev(holes_.end()));
      --next_;
    }
  } else {
    holes_.insert(id);
  }
  return obj;
}

std::shared_ptr<Object> ObjectTable::find(std::uint32_t id) const {
  auto it = objects_.find(id);
  return it == objects_.end() || !it->second->finalized ? nullptr : it->second;
}

std::shared_ptr<Object> ObjectTable::find_any(std::uint32_t id) const {
  auto it = objects_.find(id);
  return it == objects_.end() ? nullptr : it->second;
}

}  // namespace fastmap::sim
