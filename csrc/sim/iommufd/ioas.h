// An IOAS object: an I/O address space (io_pagetable) that HWPTs and devices attach to.
#pragma once

#include <vector>

#include "sim/iommufd/io_pagetable.h"
#include "sim/iommufd/objects.h"

namespace fastmap::sim {

class Hwpt;

class Ioas final : public Object {
 public:
  static constexpr ObjType kType = ObjType::kIoas;
  explicit Ioas(IommufdCtx& ctx) : Object(kType), iopt(ctx) {}

  // iommufd_ioas_destroy: drop every area (nothing is attached: users was 0).
  void destroy(IommufdCtx& ctx) override;

  IoPagetable iopt;
  // The paging HWPTs whose domains are in `iopt` (ioas->hwpt_list), oldest first: the
  // auto-domain search tries them in this order.
  std::vector<Hwpt*> hwpts;
};

}  // namespace fastmap::sim
