// IOMMU_FAULT_QUEUE_ALLOC: a fault queue object and its fd. No simulated device raises
// I/O page faults, so the queue stays empty: reads return nothing and any page response
// names an unknown fault. The open fd holds a user on the object (DESTROY answers EBUSY
// until it is closed) and a reference on the context, as the kernel's file does.
#include <cerrno>
#include <memory>
#include <mutex>

#include "sim/core/file.h"
#include "sim/iommufd/ctx.h"
#include "sim/iommufd/ioctls.h"
#include "sim/core/kernel_core.h"
#include "uapi/iommufd.h"

namespace fastmap::sim {

using namespace fastmap::uapi;

namespace {

class FaultObj final : public Object {
 public:
  static constexpr ObjType kType = ObjType::kFault;
  FaultObj() : Object(kType) {}
};

// sizeof(struct iommu_hwpt_page_response): {u32 cookie; u32 code;}.
constexpr std::size_t kResponseSize = 8;

class FaultFile final : public File {
 public:
  FaultFile(std::shared_ptr<IommufdCtx> ctx, std::shared_ptr<FaultObj> obj)
      : ctx_(std::move(ctx)), obj_(std::move(obj)) {}

  // release(): drop the fd's user on the object.
  ~FaultFile() override {
    if (!ctx_) return;
    std::lock_guard<std::mutex> g(ctx_->mu);
    --obj_->users;
  }

  // For a creation that fails after the fd was handed out, under the context lock.
  void abandon() {
    --obj_->users;
    ctx_.reset();
  }

  long ioctl(unsigned long, void*) noexcept override { return -ENOTTY; }
  // The anonymous file is not positional: pread/pwrite give ESPIPE at any offset (seen on
  // 6.12.95 in the VM); the queue is read and answered with read(2)/write(2).
  ssize_t pread(void*, std::size_t, std::uint64_t) noexcept override { return -ESPIPE; }
  ssize_t pwrite(const void*, std::size_t, std::uint64_t) noexcept override { return -ESPIPE; }
  ssize_t read(void*, std::size_t) noexcept override { return 0; }  // no faults to deliver
  ssize_t write(const void*, std::size_t count) noexcept override {
    if (count % kResponseSize) return -EINVAL;
    return count ? -EINVAL : 0;  // every cookie is unknown: nothing is pending
  }

 private:
  std::shared_ptr<IommufdCtx> ctx_;
  std::shared_ptr<FaultObj> obj_;
};

}  // namespace

int iommufd_fault_alloc(Ucmd& u) {
  auto& cmd = u.get<iommu_fault_alloc>();
  IommufdCtx& ctx = u.ctx;
  if (cmd.flags) return -EOPNOTSUPP;
  auto obj = std::make_shared<FaultObj>();
  if (int rc = ctx.objects.add(obj, false)) return rc;
  obj->users = 1;  // the fd's
  auto file = std::make_shared<FaultFile>(ctx.shared_from_this(), obj);
  const int fd = ctx.kernel.install(file);
  if (fd < 0) {
    file->abandon();
    ctx.remove_object(obj);
    return fd;
  }
  cmd.out_fault_id = obj->id;
  cmd.out_fault_fd = static_cast<std::uint32_t>(fd);
  if (int rc = u.respond()) {
    file->abandon();
    ctx.kernel.close(fd);
    ctx.remove_object(obj);
    return rc;
  }
  ctx.objects.finalize(*obj);
  return 0;
}

bool is_fault_object(const Object& obj) { return obj.type == ObjType::kFault; }

}  // namespace fastmap::sim
