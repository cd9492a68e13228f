// The selftest's access objects (IOMMU_TEST_OP_CREATE_ACCESS and friends): an in-kernel
// user of an IOAS, as a VFIO mdev driver would be (iommufd_access), behind its own fd.
//
// The access is an iommufd object (it takes an id, and holds a user on itself for as long
// as its fd is open, so DESTROY answers EBUSY) and holds a user on its IOAS. Pages pinned
// through it are kept as items; an unmap of their IOVA asks the access to drop them, and
// the selftest's access does so at once. Closing the fd unpins everything, detaches and
// destroys the object. Errnos follow drivers/iommu/iommufd/selftest.c and device.c (6.12).
#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "sim/core/file.h"
#include "sim/core/kernel_core.h"
#include "sim/core/user_memory.h"
#include "sim/iommufd/access.h"
#include "sim/iommufd/ctx.h"
#include "sim/iommufd/ioas.h"
#include "sim/iommufd/ioctls.h"
#include "uapi/iommufd_test.h"

namespace fastmap::sim {

using namespace fastmap::uapi;

namespace {

class AccessObj final : public Object, public IoasAccess {
 public:
  static constexpr ObjType kType = ObjType::kAccess;
  explicit AccessObj(bool pin) : Object(kType), needs_pin(pin) {
    iova_alignment = pin ? host_page_size() : 1;
  }

  struct Item {
    std::uint64_t iova;
    std::uint64_t length;
    std::uint32_t id;
    std::vector<AccessPin> pins;
  };

  // ops->unmap of the selftest access: unpin every item touching the range.
  void unmap_notify(std::uint64_t iova, std::uint64_t length) override {
    const std::uint64_t last = iova + length - 1;
    for (auto it = items.begin(); it != items.end();) {
      if (iova > it->iova + it->length - 1 || last < it->iova) {
        ++it;
        continue;
      }
      if (ioas) ioas->iopt.access_unpin(it->pins);
      it = items.erase(it);
    }
  }

  // iommufd_access_change_ioas: attach to `to` (may be null), leaving the current IOAS
  // after its pins are dropped.
  int change_ioas(const std::shared_ptr<Ioas>& to) {
    if (to == ioas) return 0;
    if (to) {
      if (int rc = to->iopt.add_access(this)) return rc;
      ++to->users;
    }
    if (ioas) {
      unmap_notify(0, ~0ull);
      ioas->iopt.remove_access(this);
      --ioas->users;
    }
    ioas = to;
    return 0;
  }

  void destroy(IommufdCtx&) override { change_ioas(nullptr); }

  const bool needs_pin;
  std::shared_ptr<Ioas> ioas;
  std::vector<Item> items;
  std::uint32_t next_id = 0;
};

// The access fd ([iommufd_test_staccess]). Its release is the access's end.
class AccessFile final : public File {
 public:
  AccessFile(std::shared_ptr<IommufdCtx> ctx, std::shared_ptr<AccessObj> obj)
      : ctx_(std::move(ctx)), obj_(std::move(obj)) {}

  ~AccessFile() override {
    if (!ctx_) return;
    std::lock_guard<std::mutex> g(ctx_->mu);
    release_locked();
  }

  // A creation that fails after the fd was installed: clean up under the caller's lock,
  // leaving nothing for the destructor.
  void abandon() {
    release_locked();
    ctx_.reset();
  }

  long ioctl(unsigned long, void*) noexcept override { return -ENOTTY; }

  AccessObj& access() const noexcept { return *obj_; }
  const IommufdCtx* ctx() const noexcept { return ctx_.get(); }

 private:
  void release_locked() {
    obj_->change_ioas(nullptr);
    --obj_->users;  // the driver's reference (iommufd_access_destroy)
    ctx_->remove_object(obj_);
  }

  std::shared_ptr<IommufdCtx> ctx_;
  std::shared_ptr<AccessObj> obj_;
};

// iommufd_access_get: the access behind an fd of this process, or -EBADFD.
int access_get(IommufdCtx& ctx, std::uint32_t fd, std::shared_ptr<File>* hold, AccessObj** out) {
  auto file = ctx.kernel.fget(static_cast<int>(fd));
  auto* af = dynamic_cast<AccessFile*>(file.get());
  if (!af || af->ctx() != &ctx) return -EBADFD;
  *hold = std::move(file);
  *out = &af->access();
  return 0;
}

int change_ioas_id(IommufdCtx& ctx, AccessObj& acc, std::uint32_t ioas_id) {
  auto ioas = ctx.objects.get<Ioas>(ioas_id);
  if (!ioas) return -ENOENT;
  return acc.change_ioas(ioas);
}

constexpr std::uint64_t kMaxAccessLength = 16ull << 20;  // the selftest refuses more

}  // namespace

int selftest_create_access(Ucmd& u, iommu_test_cmd& cmd) {
  IommufdCtx& ctx = u.ctx;
  const std::uint32_t flags = cmd.u.create_access.flags;
  if (flags & ~MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES) return -EOPNOTSUPP;
  auto obj = std::make_shared<AccessObj>(flags & MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES);
  if (!ctx.objects.insert(obj)) return -ENOSPC;
  obj->users = 1;  // the driver's, until the fd goes
  auto file = std::make_shared<AccessFile>(ctx.shared_from_this(), obj);
  const int fd = ctx.kernel.install(file);
  if (fd < 0) {
    file->abandon();
    return -ENOMEM;  // get_unused_fd_flags failing is reported as ENOMEM
  }
  int rc = change_ioas_id(ctx, *obj, cmd.id);
  if (!rc) {
    cmd.u.create_access.out_access_fd = static_cast<std::uint32_t>(fd);
    rc = u.respond();
  }
  if (rc) {
    file->abandon();
    ctx.kernel.close(fd);
  }
  return rc;
}

int selftest_access_replace_ioas(Ucmd& u, iommu_test_cmd& cmd) {
  std::shared_ptr<File> hold;
  AccessObj* acc = nullptr;
  if (int rc = access_get(u.ctx, cmd.id, &hold, &acc)) return rc;
  if (!acc->ioas) return -ENOENT;
  return change_ioas_id(u.ctx, *acc, cmd.u.access_replace_ioas.ioas_id);
}

int selftest_access_pages(Ucmd& u, iommu_test_cmd& cmd) {
  auto& ap = cmd.u.access_pages;
  if (ap.length > kMaxAccessLength) return -ENOMEM;
  if (ap.flags & ~(MOCK_FLAGS_ACCESS_WRITE | MOCK_FLAGS_ACCESS_SYZ)) return -EOPNOTSUPP;
  std::shared_ptr<File> hold;
  AccessObj* acc = nullptr;
  if (int rc = access_get(u.ctx, cmd.id, &hold, &acc)) return rc;
  if (!acc->needs_pin) return -EOPNOTSUPP;
  // iommufd_access_pin_pages.
  if (ap.length == 0) return -EINVAL;
  if (ap.iova + (ap.length - 1) < ap.iova) return -EOVERFLOW;
  if (!acc->ioas) return -ENOENT;
  std::vector<AccessPin> pins;
  std::vector<std::uint64_t> vas;
  if (int rc = acc->ioas->iopt.access_pin(ap.iova, ap.length, ap.flags & MOCK_FLAGS_ACCESS_WRITE,
                                          &pins, &vas)) {
    return rc;
  }
  int rc = 0;
  if (ap.uptr) {
    // iommufd_test_check_pages: the pinned pages are the ones at uptr.
    const std::uint64_t ps = host_page_size();
    std::uint64_t uva = ap.uptr - (ap.iova % ps);
    for (std::uint64_t va : vas) {
      if ((rc = check_user_pages(uva, ps, false))) break;
      if ((uva & ~(ps - 1)) != va) {
        rc = -EBADE;
        break;
      }
      uva += ps;
    }
  }
  if (!rc) {
    ap.out_access_pages_id = acc->next_id;
    rc = u.respond();
  }
  if (rc) {
    acc->ioas->iopt.access_unpin(pins);
    return rc;
  }
  acc->items.push_back({ap.iova, ap.length, acc->next_id++, std::move(pins)});
  return 0;
}

int selftest_destroy_access_pages(Ucmd& u, iommu_test_cmd& cmd) {
  std::shared_ptr<File> hold;
  AccessObj* acc = nullptr;
  if (int rc = access_get(u.ctx, cmd.id, &hold, &acc)) return rc;
  const std::uint32_t id = cmd.u.destroy_access_pages.access_pages_id;
  for (auto it = acc->items.begin(); it != acc->items.end(); ++it) {
    if (it->id != id) continue;
    if (acc->ioas) acc->ioas->iopt.access_unpin(it->pins);
    acc->items.erase(it);
    return 0;
  }
  return -ENOENT;
}

int selftest_access_rw(Ucmd& u, iommu_test_cmd& cmd) {
  const auto& rw = cmd.u.access_rw;
  if (rw.length > kMaxAccessLength) return -ENOMEM;
  if (rw.flags & ~(MOCK_ACCESS_RW_WRITE | MOCK_ACCESS_RW_SLOW_PATH | MOCK_FLAGS_ACCESS_SYZ)) {
    return -EOPNOTSUPP;
  }
  std::shared_ptr<File> hold;
  AccessObj* acc = nullptr;
  if (int rc = access_get(u.ctx, cmd.id, &hold, &acc)) return rc;
  std::vector<unsigned char> tmp(rw.length);
  const bool write = rw.flags & MOCK_ACCESS_RW_WRITE;
  if (write && copy_from_user(tmp.data(), rw.uptr, rw.length)) return -EFAULT;
  // iommufd_access_rw.
  if (rw.length == 0) return -EINVAL;
  if (rw.iova + (rw.length - 1) < rw.iova) return -EOVERFLOW;
  if (!acc->ioas) return -ENOENT;
  if (int rc = acc->ioas->iopt.access_rw(rw.iova, tmp.data(), rw.length, write)) return rc;
  if (!write && copy_to_user(rw.uptr, tmp.data(), rw.length)) return -EFAULT;
  return 0;
}

}  // namespace fastmap::sim
