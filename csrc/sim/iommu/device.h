// A device behind a simulated IOMMU: what both iommufd (bind/attach) and Type1 see of it.
//
// Concrete devices: vfio::PciDevice (with an edu-style DMA engine) behind VFIO, and the
// iommufd selftest's mock device. A device is attached to at most one Domain at a time and
// performs DMA through it.
#pragma once

#include <cerrno>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "sim/core/fork_gate.h"
#include "sim/iommu/domain.h"
#include "sim/iommu/iommu_model.h"

namespace fastmap::sim {

class Device {
 public:
  Device(std::string name, IommuModel model) : name_(std::move(name)), model_(std::move(model)) {}
  virtual ~Device() = default;
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  const std::string& name() const noexcept { return name_; }
  const IommuModel& iommu() const noexcept { return model_; }

  // The domain DMA currently goes through (nullptr: blocked, every DMA faults).
  std::shared_ptr<Domain> domain() const {
    std::lock_guard<std::mutex> g(mu_);
    return domain_;
  }
  void set_domain(std::shared_ptr<Domain> d) {
    std::lock_guard<std::mutex> g(mu_);
    domain_ = std::move(d);
  }

  // DMA helpers for device models: 0 or -errno (a fault, also recorded by the domain).
  int dma_read(std::uint64_t iova, void* dst, std::size_t len) noexcept {
    SimEntry entry;
    auto d = domain();
    return d ? d->dma_read(iova, dst, len) : -EFAULT;
  }
  int dma_write(std::uint64_t iova, const void* src, std::size_t len) noexcept {
    SimEntry entry;
    auto d = domain();
    return d ? d->dma_write(iova, src, len) : -EFAULT;
  }

 private:
  std::string name_;
  IommuModel model_;
  mutable std::mutex mu_;
  std::shared_ptr<Domain> domain_;
};

}  // namespace fastmap::sim
