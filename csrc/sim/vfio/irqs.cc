#include "sim/vfio/irqs.h"

#include <cerrno>
#include <cstring>
#include <new>

#include "uapi/vfio.h"

namespace fastmap::sim::vfio {

namespace {

using namespace fastmap::uapi;

std::int32_t fd_at(const std::uint8_t* data, std::uint32_t i) {
  std::int32_t fd;
  std::memcpy(&fd, data + i * sizeof fd, sizeof fd);
  return fd;
}

}  // namespace

VfioIrqs::~VfioIrqs() { release(); }

std::uint32_t VfioIrqs::count(std::uint32_t index) const noexcept {
  switch (index) {
    case VFIO_PCI_INTX_IRQ_INDEX: return pci_.interrupt_pin() != 0 ? 1 : 0;
    case VFIO_PCI_MSI_IRQ_INDEX: return pci_.msi_vectors();
    case VFIO_PCI_MSIX_IRQ_INDEX: return 0;  // no MSI-X capability
    case VFIO_PCI_ERR_IRQ_INDEX: return 0;   // only PCI Express functions have one
    case VFIO_PCI_REQ_IRQ_INDEX: return 1;
    default: return 0;
  }
}

int VfioIrqs::set(std::uint32_t flags, std::uint32_t index, std::uint32_t start,
                  std::uint32_t count, const std::uint8_t* data) noexcept {
  const std::uint32_t action = flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
  std::lock_guard<std::mutex> g(mu_);
  try {
    switch (index) {
      case VFIO_PCI_INTX_IRQ_INDEX:
        if (action == VFIO_IRQ_SET_ACTION_MASK) return intx_mask(start, count, flags, data);
        if (action == VFIO_IRQ_SET_ACTION_UNMASK) return intx_unmask(start, count, flags, data);
        if (action == VFIO_IRQ_SET_ACTION_TRIGGER) {
          return intx_trigger(start, count, flags, data);
        }
        break;
      case VFIO_PCI_MSI_IRQ_INDEX:
      case VFIO_PCI_MSIX_IRQ_INDEX:
        // Masking MSI vectors is not exported by vfio-pci.
        if (action == VFIO_IRQ_SET_ACTION_TRIGGER) {
          return msi_trigger(index == VFIO_PCI_MSI_IRQ_INDEX ? Type::kMsi : Type::kMsix, start,
                             count, flags, data);
        }
        break;
      case VFIO_PCI_REQ_IRQ_INDEX:
        if (action == VFIO_IRQ_SET_ACTION_TRIGGER) {
          if (start != 0 || count > 1) return -EINVAL;
          return single_trigger(&req_trigger_, count, flags, data);
        }
        break;
      default:
        break;  // ERR: not a PCI Express function
    }
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
  return -ENOTTY;
}

void VfioIrqs::set_type(Type t) {
  type_ = t;
  pci_.set_msi_enabled(t == Type::kMsi || t == Type::kMsix);
}

void VfioIrqs::intx_send() {
  if (type_ == Type::kIntx && !virq_disabled_ && intx_trigger_) intx_trigger_->signal();
}

bool VfioIrqs::intx_unmask_still_pending() {
  if (type_ != Type::kIntx || !intx_masked_ || virq_disabled_) return false;
  intx_masked_ = line_;  // pci_check_and_unmask_intx refuses while the line is asserted
  return line_;
}

int VfioIrqs::intx_trigger(std::uint32_t start, std::uint32_t count, std::uint32_t flags,
                           const std::uint8_t* data) {
  const bool intx = type_ == Type::kIntx;
  if (intx && count == 0 && (flags & VFIO_IRQ_SET_DATA_NONE)) {
    intx_disable();
    return 0;
  }
  if (!(intx || type_ == Type::kNone) || start != 0 || count != 1) return -EINVAL;
  if (flags & VFIO_IRQ_SET_DATA_EVENTFD) {
    std::unique_ptr<EventFdRef> trigger;
    const std::int32_t fd = fd_at(data, 0);
    if (fd >= 0) {
      if (int rc = EventFdRef::get(fd, &trigger); rc != 0) return rc;
    }
    if (intx) {
      intx_trigger_ = std::move(trigger);
      return 0;
    }
    // vfio_intx_enable: masked from the start when the user has DisINTx set; an asserted
    // line then raises the interrupt at once.
    intx_trigger_ = std::move(trigger);
    intx_masked_ = virq_disabled_;
    set_type(Type::kIntx);
    if (line_ && !intx_masked_) {
      intx_masked_ = true;
      intx_send();
    }
    return 0;
  }
  if (!intx) return -EINVAL;
  // Loopback: signal without touching the mask.
  if ((flags & VFIO_IRQ_SET_DATA_NONE) || ((flags & VFIO_IRQ_SET_DATA_BOOL) && data[0])) {
    intx_send();
  }
  return 0;
}

int VfioIrqs::intx_mask(std::uint32_t start, std::uint32_t count, std::uint32_t flags,
                        const std::uint8_t* data) {
  if (type_ != Type::kIntx || start != 0 || count != 1) return -EINVAL;
  if (flags & VFIO_IRQ_SET_DATA_EVENTFD) return -ENOTTY;  // not implemented by vfio-pci
  if ((flags & VFIO_IRQ_SET_DATA_NONE) || ((flags & VFIO_IRQ_SET_DATA_BOOL) && data[0])) {
    intx_masked_ = true;
  }
  return 0;
}

int VfioIrqs::intx_unmask(std::uint32_t start, std::uint32_t count, std::uint32_t flags,
                          const std::uint8_t* data) {
  if (type_ != Type::kIntx || start != 0 || count != 1) return -EINVAL;
  if (flags & VFIO_IRQ_SET_DATA_EVENTFD) {
    // An unmask eventfd (an irqfd the kernel polls) is not modelled; fd -1 removes one.
    return fd_at(data, 0) >= 0 ? -ENOTTY : 0;
  }
  if ((flags & VFIO_IRQ_SET_DATA_NONE) || ((flags & VFIO_IRQ_SET_DATA_BOOL) && data[0])) {
    if (intx_unmask_still_pending()) intx_send();
  }
  return 0;
}

int VfioIrqs::msi_trigger(Type type, std::uint32_t start, std::uint32_t count,
                          std::uint32_t flags, const std::uint8_t* data) {
  if (type_ == type && count == 0 && (flags & VFIO_IRQ_SET_DATA_NONE)) {
    msi_disable();
    return 0;
  }
  if (!(type_ == type || type_ == Type::kNone)) return -EINVAL;
  if (flags & VFIO_IRQ_SET_DATA_EVENTFD) {
    const bool enabling = type_ == Type::kNone;
    if (enabling) {
      // vfio_msi_enable allocates start + count vectors; MSI cannot have more than the
      // capability offers (pci_alloc_irq_vectors returns how many it could).
      const std::uint32_t nvec = start + count;
      if (nvec == 0) return -ERANGE;  // pci_alloc_irq_vectors(1, 0): max below min
      if (nvec > pci_.msi_vectors() && type == Type::kMsi) {
        return static_cast<int>(pci_.msi_vectors());
      }
      vectors_.clear();
      vectors_.resize(nvec);
      set_type(type);
    }
    if (start + count > vectors_.size()) {
      // More vectors than were allocated at enable: refused without dynamic MSI-X.
      return -EINVAL;
    }
    std::vector<std::unique_ptr<EventFdRef>> refs(count);
    for (std::uint32_t i = 0; i < count; ++i) {
      const std::int32_t fd = fd_at(data, i);
      if (fd < 0) continue;
      if (int rc = EventFdRef::get(fd, &refs[i]); rc != 0) {
        // vfio_msi_set_block releases the vectors it set before failing; a new enable
        // is undone entirely.
        for (std::uint32_t j = 0; j < count; ++j) vectors_[start + j].reset();
        if (enabling) msi_disable();
        return rc;
      }
    }
    for (std::uint32_t i = 0; i < count; ++i) vectors_[start + i] = std::move(refs[i]);
    return 0;
  }
  if (type_ != type) return -EINVAL;
  for (std::uint32_t i = start; i < start + count && i < vectors_.size(); ++i) {
    const bool fire = (flags & VFIO_IRQ_SET_DATA_NONE) ||
                      ((flags & VFIO_IRQ_SET_DATA_BOOL) && data[i - start]);
    if (fire && vectors_[i]) vectors_[i]->signal();
  }
  return 0;
}

int VfioIrqs::single_trigger(std::unique_ptr<EventFdRef>* slot, std::uint32_t count,
                             std::uint32_t flags, const std::uint8_t* data) {
  if (flags & VFIO_IRQ_SET_DATA_NONE) {
    if (!*slot) return -EINVAL;
    if (count) {
      (*slot)->signal();
    } else {
      slot->reset();
    }
    return 0;
  }
  if (flags & VFIO_IRQ_SET_DATA_BOOL) {
    if (!count) return -EINVAL;
    if (data[0] && *slot) (*slot)->signal();
    return 0;
  }
  if (flags & VFIO_IRQ_SET_DATA_EVENTFD) {
    if (!count) return -EINVAL;
    const std::int32_t fd = fd_at(data, 0);
    if (fd == -1) {
      slot->reset();
      return 0;
    }
    if (fd >= 0) {
      std::unique_ptr<EventFdRef> ref;
      if (int rc = EventFdRef::get(fd, &ref); rc != 0) return rc;
      *slot = std::move(ref);
      return 0;
    }
  }
  return -EINVAL;
}

void VfioIrqs::intx_disable() {
  intx_trigger_.reset();
  intx_masked_ = false;
  set_type(Type::kNone);
}

void VfioIrqs::msi_disable() {
  vectors_.clear();
  set_type(Type::kNone);
}

void VfioIrqs::release() noexcept {
  std::lock_guard<std::mutex> g(mu_);
  if (type_ == Type::kIntx) intx_disable();
  if (type_ == Type::kMsi || type_ == Type::kMsix) msi_disable();
  err_trigger_.reset();
  req_trigger_.reset();
}

void VfioIrqs::intx_level(bool asserted) noexcept {
  std::lock_guard<std::mutex> g(mu_);
  line_ = asserted;
  // vfio_intx_handler: an asserted, unmasked line masks itself and signals once.
  if (asserted && type_ == Type::kIntx && !intx_masked_ && !virq_disabled_) {
    intx_masked_ = true;
    intx_send();
  }
}

void VfioIrqs::msi_message(unsigned vector) noexcept {
  std::lock_guard<std::mutex> g(mu_);
  if ((type_ == Type::kMsi || type_ == Type::kMsix) && vector < vectors_.size() &&
      vectors_[vector]) {
    vectors_[vector]->signal();
  }
}

void VfioIrqs::intx_disable_bit(bool set) noexcept {
  std::lock_guard<std::mutex> g(mu_);
  if (set == virq_disabled_) return;
  virq_disabled_ = set;
  if (type_ != Type::kIntx) return;
  if (set) {
    intx_masked_ = true;  // vfio_pci_intx_mask
  } else if (intx_unmask_still_pending()) {
    intx_send();
  }
}

}  // namespace fastmap::sim::vfio
