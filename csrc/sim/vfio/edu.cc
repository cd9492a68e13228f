#include "sim/vfio/edu.h"

#include <cerrno>

namespace fastmap::sim::vfio {

EduDevice::EduDevice(std::string bdf, IommuModel model, PciIds ids, std::uint32_t bar0_addr)
    : PciDevice(std::move(bdf), std::move(model), ids, kBar0Size, bar0_addr) {}

std::vector<std::uint8_t> EduDevice::dma_buffer() const {
  std::lock_guard<std::mutex> g(mu_);
  return {buf_.begin(), buf_.end()};
}

std::uint64_t EduDevice::mmio_read(std::uint64_t off, unsigned size) {
  const std::uint64_t invalid = ~0ull;  // what an access the device refuses reads as
  // Registers below 0x80 take 32-bit accesses only; the DMA block takes 32 or 64 bits.
  if (off < 0x80 && size != 4) return invalid;
  if (off >= 0x80 && size != 4 && size != 8) return invalid;
  switch (off) {
    case kRegIdent: return kIdent;
    case kRegLiveness: return addr4_;
    case kRegFactorial: return fact_;
    case kRegStatus: return status_;
    case kRegIrqStatus: return irq_status_;
    case kRegDmaSrc: return dma_src_;
    case kRegDmaDst: return dma_dst_;
    case kRegDmaCount: return dma_cnt_;
    case kRegDmaCmd: return dma_cmd_;
    default: return invalid;
  }
}

void EduDevice::mmio_write(std::uint64_t off, std::uint64_t val, unsigned size) {
  if (off < 0x80 && size != 4) return;
  if (off >= 0x80 && size != 4 && size != 8) return;
  // The DMA registers are frozen while a transfer runs (never observable here: transfers
  // complete inside the write of the command register).
  const bool dma_busy = (dma_cmd_ & kDmaRun) != 0;
  switch (off) {
    case kRegLiveness:
      addr4_ = ~static_cast<std::uint32_t>(val);
      break;
    case kRegFactorial: {
      if (status_ & kStatusComputing) break;
      std::uint32_t n = static_cast<std::uint32_t>(val);
      std::uint32_t result = 1;  // 32-bit arithmetic wraps, as in QEMU
      for (std::uint32_t i = n; i > 0; --i) result *= i;
      fact_ = result;
      if (status_ & kStatusIrqFact) raise_irq(kFactIrq);
      break;
    }
    case kRegStatus:
      if (val & kStatusIrqFact) {
        status_ |= kStatusIrqFact;
      } else {
        status_ &= ~kStatusIrqFact;
      }
      break;
    case kRegIrqRaise:
      raise_irq(static_cast<std::uint32_t>(val));
      break;
    case kRegIrqAck:
      lower_irq(static_cast<std::uint32_t>(val));
      break;
    case kRegDmaSrc:
      if (!dma_busy) dma_src_ = val;
      break;
    case kRegDmaDst:
      if (!dma_busy) dma_dst_ = val;
      break;
    case kRegDmaCount:
      if (!dma_busy) dma_cnt_ = val;
      break;
    case kRegDmaCmd:
      if (!(val & kDmaRun) || dma_busy) break;
      dma_cmd_ = val;
      run_dma();
      break;
    default:
      break;
  }
}

void EduDevice::raise_irq(std::uint32_t bits) {
  irq_status_ |= bits;
  if (irq_status_ == 0) return;
  if (msi_enabled()) {
    msi_notify(0);
  } else {
    set_intx(true);
  }
}

void EduDevice::lower_irq(std::uint32_t bits) {
  irq_status_ &= ~bits;
  if (irq_status_ == 0 && !msi_enabled()) set_intx(false);
}

void EduDevice::run_dma() {
  const bool to_ram = (dma_cmd_ & kDmaToRam) != 0;
  // The device-side address must lie in the buffer; the bus address is cut to the
  // device's DMA mask (28 bits by default: higher bits are silently dropped).
  const std::uint64_t dev_addr = to_ram ? dma_src_ : dma_dst_;
  const std::uint64_t bus_addr = (to_ram ? dma_dst_ : dma_src_) & dma_mask_;
  const std::uint64_t end = dev_addr + dma_cnt_;
  const bool in_range =
      end >= dev_addr && dev_addr >= kDmaStart && end <= kDmaStart + kDmaSize;
  if (!in_range) {
    log_fault(dev_addr, dma_cnt_, to_ram, -ERANGE);
  } else if (dma_cnt_ != 0) {
    std::uint8_t* p = buf_.data() + (dev_addr - kDmaStart);
    const std::size_t n = static_cast<std::size_t>(dma_cnt_);
    if (to_ram) {
      bus_write(bus_addr, p, n);
    } else {
      bus_read(bus_addr, p, n);
    }
  }
  dma_cmd_ &= ~kDmaRun;
  if (dma_cmd_ & kDmaIrq) raise_irq(kDmaIrqBit);
}

}  // namespace fastmap::sim::vfio
