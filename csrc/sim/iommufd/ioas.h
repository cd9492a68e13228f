// An IOAS object: an I/O address space (io_pagetable) that HWPTs and devices attach to.
#pragma once

#include "sim/iommufd/objects.h"

namespace fastmap::sim {

class Ioas final : public Object {
 public:
  static constexpr ObjType kType = ObjType::kIoas;
  Ioas() : Object(kType) {}
};

}  // namespace fastmap::sim
