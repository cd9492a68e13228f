// QEMU's "edu" educational PCI device (hw/misc/edu.c, docs/specs/edu.rst): identification
// and liveness registers, a factorial unit, interrupt status, and a DMA engine that copies
// between guest memory and a 4 KiB buffer at device address 0x40000.
//
// Differences from QEMU, on purpose: the factorial and the DMA complete synchronously
// inside the register write that starts them (QEMU uses a thread and a 100 ms timer), so
// the COMPUTING status bit and the DMA RUN bit already read 0 afterwards; a DMA whose
// device-buffer range is out of bounds is logged (-ERANGE) and not performed, as newer
// QEMU does, instead of touching memory outside the buffer.
//
// Interrupts as in QEMU: raising bits in the interrupt status (the raise register, a DMA
// with the IRQ bit, a factorial with its IRQ enabled) sends MSI vector 0 when MSI is
// enabled, else asserts INTx; acknowledging the last bit deasserts INTx.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "sim/vfio/pci_device.h"

namespace fastmap::sim::vfio {

class EduDevice final : public PciDevice {
 public:
  static constexpr std::uint64_t kBar0Size = 1ull << 20;
  static constexpr std::uint64_t kDmaStart = 0x40000;
  static constexpr std::uint64_t kDmaSize = 4096;
  static constexpr std::uint64_t kDefaultDmaMask = (1ull << 28) - 1;

  // Registers (BAR0 offsets).
  static constexpr std::uint64_t kRegIdent = 0x00, kRegLiveness = 0x04, kRegFactorial = 0x08;
  static constexpr std::uint64_t kRegStatus = 0x20, kRegIrqStatus = 0x24;
  static constexpr std::uint64_t kRegIrqRaise = 0x60, kRegIrqAck = 0x64;
  static constexpr std::uint64_t kRegDmaSrc = 0x80, kRegDmaDst = 0x88, kRegDmaCount = 0x90;
  static constexpr std::uint64_t kRegDmaCmd = 0x98;

  static constexpr std::uint32_t kIdent = 0x010000ed;  // version 1.0, "ed"
  static constexpr std::uint32_t kStatusComputing = 0x01, kStatusIrqFact = 0x80;
  static constexpr std::uint64_t kDmaRun = 0x1, kDmaToRam = 0x2, kDmaIrq = 0x4;
  static constexpr std::uint32_t kFactIrq = 0x1, kDmaIrqBit = 0x100;

  EduDevice(std::string bdf, IommuModel model, PciIds ids, std::uint32_t bar0_addr);

  // The device buffer as the device holds it (for tests and debugging).
  std::vector<std::uint8_t> dma_buffer() const;
  std::uint64_t dma_mask() const noexcept { return dma_mask_; }

 protected:
  std::uint64_t mmio_read(std::uint64_t off, unsigned size) override;
  void mmio_write(std::uint64_t off, std::uint64_t val, unsigned size) override;
  unsigned mmio_register_size(std::uint64_t off) const override { return off < 0x80 ? 4 : 8; }
  // Migration record (edu_migration.cc): every register and the DMA buffer.
  bool migratable() const noexcept override { return true; }
  void model_save(std::vector<std::uint8_t>* out) const override;
  int model_load(const std::uint8_t* data, std::size_t len) override;

 private:
  void run_dma();
  void raise_irq(std::uint32_t bits);
  void lower_irq(std::uint32_t bits);

  std::uint64_t dma_mask_ = kDefaultDmaMask;
  std::uint32_t addr4_ = 0;
  std::uint32_t fact_ = 0;
  std::uint32_t status_ = 0;
  std::uint32_t irq_status_ = 0;
  std::uint64_t dma_src_ = 0, dma_dst_ = 0, dma_cnt_ = 0, dma_cmd_ = 0;
  std::array<std::uint8_t, kDmaSize> buf_{};
};

}  // namespace fastmap::sim::vfio
