// vfio-pci's interrupt plumbing for one device (drivers/vfio/pci/vfio_pci_intrs.c): which
// of INTx, MSI or MSI-X is enabled, the eventfd each vector signals, INTx's automask, and
// the error/request eventfds; VFIO_DEVICE_SET_IRQS lands here after the generic checks.
//
// The device model reaches it as its IrqSink: an INTx line level or an MSI message. INTx is
// level-triggered and automasked as with a DisINTx-capable (PCI 2.3) device: an asserted,
// unmasked line masks itself and signals the trigger once; the user unmasks
// (ACTION_UNMASK), and an unmask while the line is still asserted leaves it masked and
// signals again. MSI vectors signal once per message. MSI masking is not supported by
// vfio-pci (ENOTTY), nor is an eventfd for INTx MASK.
//
// Lock order: the device model's lock, then this object's.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "sim/core/eventfd_ref.h"
#include "sim/vfio/pci_device.h"

namespace fastmap::sim::vfio {

class VfioIrqs final : public IrqSink {
 public:
  explicit VfioIrqs(PciDevice& pci) noexcept : pci_(pci) {}
  ~VfioIrqs() override;
  VfioIrqs(const VfioIrqs&) = delete;
  VfioIrqs& operator=(const VfioIrqs&) = delete;

  // Number of vectors of an IRQ index (vfio_pci_get_irq_count).
  std::uint32_t count(std::uint32_t index) const noexcept;
  // The data of a SET_IRQS already validated against count(index): 0 or -errno.
  int set(std::uint32_t flags, std::uint32_t index, std::uint32_t start, std::uint32_t count,
          const std::uint8_t* data) noexcept;
  // Last close of the device: every interrupt off, every eventfd released.
  void release() noexcept;

  // IrqSink (called with the device model's lock held).
  void intx_level(bool asserted) noexcept override;
  void msi_message(unsigned vector) noexcept override;
  void intx_disable_bit(bool set) noexcept override;

 private:
  enum class Type { kNone, kIntx, kMsi, kMsix };
  int intx_trigger(std::uint32_t start, std::uint32_t count, std::uint32_t flags,
                   const std::uint8_t* data);
  int intx_mask(std::uint32_t start, std::uint32_t count, std::uint32_t flags,
                const std::uint8_t* data);
  int intx_unmask(std::uint32_t start, std::uint32_t count, std::uint32_t flags,
                  const std::uint8_t* data);
  int msi_trigger(Type type, std::uint32_t start, std::uint32_t count, std::uint32_t flags,
                  const std::uint8_t* data);
  int single_trigger(std::unique_ptr<EventFdRef>* slot, std::uint32_t count,
                     std::uint32_t flags, const std::uint8_t* data);
  void intx_disable();
  void msi_disable();
  void set_type(Type t);
  void intx_send();
  // The unmask handler: unmasks unless the line is still asserted (then 1: re-send).
  bool intx_unmask_still_pending();

  PciDevice& pci_;
  std::mutex mu_;  // the kernel's igate and irqlock in one
  Type type_ = Type::kNone;
  // INTx
  std::unique_ptr<EventFdRef> intx_trigger_;
  bool intx_masked_ = false;
  bool line_ = false;           // the device's INTx line as last reported
  bool virq_disabled_ = false;  // the user's INTx-disable bit in the command register
  // MSI/MSI-X vectors: a trigger per enabled vector (null: allocated but not signalled).
  std::vector<std::unique_ptr<EventFdRef>> vectors_;
  std::unique_ptr<EventFdRef> err_trigger_, req_trigger_;
};

}  // namespace fastmap::sim::vfio
