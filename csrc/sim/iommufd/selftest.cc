// IOMMU_TEST_CMD (CONFIG_IOMMUFD_TEST): mock devices behind the mock IOMMU, reserved
// ranges, and the dirty-bit injector, as drivers/iommu/iommufd/selftest.c offers them.
//
// Modelled ops: ADD_RESERVED, MOCK_DOMAIN, MOCK_DOMAIN_FLAGS, MOCK_DOMAIN_REPLACE,
// MD_CHECK_MAP, MD_CHECK_REFS (pins counted per page by the simulated kernel),
// SET_TEMP_MEMORY_LIMIT (the pin batch size, which changes nothing visible here), DIRTY,
// and the access ops (access.cc). Not modelled (EOPNOTSUPP): the nesting and fault ops
// (MD_CHECK_IOTLB, TRIGGER_IOPF).
#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "sim/iommufd/access.h"
#include "sim/iommufd/ctx.h"
#include "sim/iommufd/idev.h"
#include "sim/iommufd/ioctls.h"
#include "sim/iommufd/pages.h"
#include "sim/core/user_memory.h"
#include "uapi/iommufd_test.h"

namespace fastmap::sim {

using namespace fastmap::uapi;

namespace {

// The selftest object (stdev): owns a mock device bound to the context. Destroying it
// detaches and unbinds the device.
class SelftestObj final : public Object {
 public:
  static constexpr ObjType kType = ObjType::kSelftest;
  SelftestObj() : Object(kType) {}
  void destroy(IommufdCtx& ctx) override {
    if (!idev) return;
    idev_detach(ctx, *idev);
    idev_unbind(ctx, *idev);
    idev.reset();
  }
  std::shared_ptr<Idev> idev;
};

std::uint64_t mock_io_page() { return host_page_size() / 2; }  // MOCK_IO_PAGE_SIZE

// mock_dev_create: the mock IOMMU offers only MOCK_IO_PAGE_SIZE IOPTEs unless the device
// asks for huge IOVA pages, and dirty tracking unless it is a NO_DIRTY device.
std::shared_ptr<Device> mock_dev_create(std::uint32_t flags, int* err) {
  if (flags & ~(MOCK_FLAGS_DEVICE_NO_DIRTY | MOCK_FLAGS_DEVICE_HUGE_IOVA)) {
    *err = -EINVAL;
    return nullptr;
  }
  static std::atomic<unsigned> next_id{0};
  IommuModel m = IommuModel::mock(!(flags & MOCK_FLAGS_DEVICE_NO_DIRTY));
  m.pgsize_bitmap = mock_io_page();
  // The mock driver has no enforce_cache_coherency op, so its HWPTs never enforce it
  // (VFIO_DMA_CC_IOMMU answers 0 through compat).
  m.enforce_cache_coherency = false;
  if (flags & MOCK_FLAGS_DEVICE_HUGE_IOVA) m.pgsize_bitmap |= mock_io_page() * 512;
  return std::make_shared<Device>("iommufd_mock" + std::to_string(next_id++), std::move(m));
}

int mock_domain(Ucmd& u, iommu_test_cmd& cmd) {
  IommufdCtx& ctx = u.ctx;
  // Ids come out in creation order: stdev, then idev, then (for an IOAS) the auto HWPT.
  // The stdev id is taken now but the object stays invisible until the end, so `id`
  // cannot name it.
  auto sobj = std::make_shared<SelftestObj>();
  if (!ctx.objects.insert(sobj, false)) return -ENOSPC;
  const std::uint32_t flags =
      cmd.op == IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS ? cmd.u.mock_domain_flags.dev_flags : 0;
  int rc = 0;
  auto dev = mock_dev_create(flags, &rc);
  if (!dev) {
    ctx.remove_object(sobj);
    return rc;
  }
  std::uint32_t idev_id = 0;
  if ((rc = idev_bind(ctx, dev, &idev_id))) {
    ctx.remove_object(sobj);
    return rc;
  }
  auto idev = ctx.objects.get<Idev>(idev_id);
  std::uint32_t pt_id = cmd.id;
  if ((rc = idev_attach(ctx, *idev, &pt_id))) {
    idev_unbind(ctx, *idev);
    ctx.remove_object(sobj);
    return rc;
  }
  sobj->idev = idev;
  // The kernel fills the reply through the mock_domain layout for both ops, so with
  // MOCK_DOMAIN_FLAGS the idev id lands where dev_flags was.
  cmd.u.mock_domain.out_hwpt_id = pt_id;
  cmd.u.mock_domain.out_stdev_id = sobj->id;
  cmd.u.mock_domain.out_idev_id = idev_id;
  if ((rc = u.respond())) {
    ctx.remove_object(sobj);  // detaches and unbinds
    return rc;
  }
  ctx.objects.finalize(*sobj);
  return 0;
}

int mock_domain_replace(Ucmd& u, iommu_test_cmd& cmd) {
  auto sobj = u.ctx.objects.get<SelftestObj>(cmd.id);
  if (!sobj) return -ENOENT;
  if (!sobj->idev || !sobj->idev->hwpt) return -EINVAL;
  std::uint32_t pt_id = cmd.u.mock_domain_replace.pt_id;
  if (int rc = idev_attach(u.ctx, *sobj->idev, &pt_id)) return rc;
  cmd.u.mock_domain_replace.pt_id = pt_id;
  return u.respond();
}

int add_reserved(Ucmd& u, iommu_test_cmd& cmd) {
  auto ioas = u.ctx.objects.get<Ioas>(cmd.id);
  if (!ioas) return -ENOENT;
  const auto& r = cmd.u.add_reserved;
  // The kernel does not guard these; an empty or wrapping range is refused here.
  if (r.length == 0 || r.start + (r.length - 1) < r.start) return -EINVAL;
  return ioas->iopt.reserve(r.start, r.start + (r.length - 1), nullptr);
}

// get_md_pagetable: a paging HWPT whose domain is the mock IOMMU's.
int get_mock_hwpt(IommufdCtx& ctx, std::uint32_t id, std::shared_ptr<Hwpt>* out) {
  auto hwpt = ctx.objects.get<Hwpt>(id);
  if (!hwpt) return -ENOENT;
  if (hwpt->domain->model().kind != IommuModel::Kind::kMock) return -EINVAL;
  *out = std::move(hwpt);
  return 0;
}

// MD_CHECK_MAP: every MOCK_IO_PAGE_SIZE piece at iova must translate to memory holding
// the same bytes as uptr (the kernel compares physical pages; the simulator's domain maps
// to process VAs, which for MAP_FILE are a different mapping of the same pages).
int md_check_map(Ucmd& u, iommu_test_cmd& cmd) {
  const std::uint64_t io = mock_io_page();
  std::uint64_t iova = cmd.u.check_map.iova, length = cmd.u.check_map.length;
  std::uint64_t uptr = cmd.u.check_map.uptr;
  if (iova % io || length % io || uptr % io || uptr + length < uptr) return -EINVAL;
  std::shared_ptr<Hwpt> hwpt;
  if (int rc = get_mock_hwpt(u.ctx, cmd.id, &hwpt)) return rc;
  std::vector<unsigned char> a(io), b(io);
  for (; length; length -= io, iova += io, uptr += io) {
    if (copy_from_user(b.data(), uptr, io)) return -EFAULT;
    long long va = hwpt->domain->translate(iova, 0);
    if (va < 0) return -EINVAL;
    if (copy_from_user(a.data(), static_cast<std::uint64_t>(va), io)) return -EINVAL;
    if (std::memcmp(a.data(), b.data(), io) != 0) return -EINVAL;
  }
  return 0;
}

// MD_CHECK_REFS: every page of [uptr, uptr+length) must be mapped and pinned `refs` times.
int md_check_refs(Ucmd& u, iommu_test_cmd& cmd) {
  const std::uint64_t ps = host_page_size();
  std::uint64_t uptr = cmd.u.check_refs.uptr, length = cmd.u.check_refs.length;
  if (length % ps || uptr % ps || uptr + length < uptr) return -EINVAL;
  for (; length; length -= ps, uptr += ps) {
    if (int rc = check_user_pages(uptr, ps, false)) return rc;
    if (page_pins(u.ctx.kernel, uptr) != cmd.u.check_refs.refs) return -EIO;
  }
  return 0;
}

int dirty(Ucmd& u, iommu_test_cmd& cmd) {
  const auto& d = cmd.u.dirty;
  if (!d.page_size || !d.length || d.iova % d.page_size || d.length % d.page_size || !d.uptr) {
    return -EINVAL;
  }
  std::shared_ptr<Hwpt> hwpt;
  if (int rc = get_mock_hwpt(u.ctx, cmd.id, &hwpt)) return rc;
  if (!hwpt->domain->dirty_tracking()) return -EINVAL;
  const std::uint64_t max = d.length / d.page_size;
  std::vector<std::uint64_t> bits((max + 63) / 64, 0);
  if (copy_from_user(bits.data(), d.uptr, (max + 7) / 8)) return -EFAULT;
  const std::uint64_t io = mock_io_page();
  std::uint64_t count = 0;
  for (std::uint64_t w = 0; w < bits.size(); ++w) {
    for (std::uint64_t word = bits[w]; word; word &= word - 1) {
      const std::uint64_t i = w * 64 + static_cast<std::uint64_t>(__builtin_ctzll(word));
      if (i >= max) break;
      // The mock looks the IOVA up as entry cur / page_size of its MOCK_IO_PAGE_SIZE
      // table, which is the IOVA itself when page_size is MOCK_IO_PAGE_SIZE.
      const std::uint64_t cur = d.iova + i * d.page_size;
      count += static_cast<std::uint64_t>(hwpt->domain->mark_dirty((cur / d.page_size) * io));
    }
  }
  cmd.u.dirty.out_nr_dirty = count;
  return u.respond();
}

}  // namespace

int iommufd_test(Ucmd& u) {
  auto& cmd = u.get<iommu_test_cmd>();
  switch (cmd.op) {
    case IOMMU_TEST_OP_ADD_RESERVED:
      return add_reserved(u, cmd);
    case IOMMU_TEST_OP_MOCK_DOMAIN:
    case IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS:
      return mock_domain(u, cmd);
    case IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE:
      return mock_domain_replace(u, cmd);
    case IOMMU_TEST_OP_MD_CHECK_MAP:
      return md_check_map(u, cmd);
    case IOMMU_TEST_OP_MD_CHECK_REFS:
      return md_check_refs(u, cmd);
    case IOMMU_TEST_OP_CREATE_ACCESS:
      return selftest_create_access(u, cmd);
    case IOMMU_TEST_OP_ACCESS_REPLACE_IOAS:
      return selftest_access_replace_ioas(u, cmd);
    case IOMMU_TEST_OP_ACCESS_PAGES:
      return selftest_access_pages(u, cmd);
    case IOMMU_TEST_OP_ACCESS_RW:
      return selftest_access_rw(u, cmd);
    case IOMMU_TEST_OP_DESTROY_ACCESS_PAGES:
      return selftest_destroy_access_pages(u, cmd);
    case IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT:
      // The pin batch's size; below one element's size _batch_init could not work.
      if (cmd.u.memory_limit.limit < sizeof(unsigned long) + sizeof(std::uint32_t)) return -EINVAL;
      return 0;
    case IOMMU_TEST_OP_DIRTY:
      return dirty(u, cmd);
    default:
      return -EOPNOTSUPP;
  }
}

}  // namespace fastmap::sim
