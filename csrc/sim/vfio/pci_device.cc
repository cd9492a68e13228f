#include "sim/vfio/pci_device.h"

#include <cerrno>
#include <cstring>

namespace fastmap::sim::vfio {

namespace {

constexpr std::size_t kMaxFaults = 1024;

// Config space offsets (PCI local bus spec, type 0 header).
constexpr std::uint32_t kVendor = 0x00, kDevice = 0x02, kCommand = 0x04, kStatus = 0x06;
constexpr std::uint32_t kRevision = 0x08, kClass = 0x09, kCacheLine = 0x0c;
constexpr std::uint32_t kBar0 = 0x10, kSubVendor = 0x2c, kSubsystem = 0x2e;
constexpr std::uint32_t kCapPtr = 0x34, kIntLine = 0x3c, kIntPin = 0x3d;
constexpr std::uint16_t kStatusCapList = 1u << 4;
constexpr std::uint16_t kStatusInterrupt = 1u << 3;  // INTx asserted (read-only)
constexpr std::uint16_t kCommandIntxDisable = 1u << 10;
// Writable command bits: I/O, memory, bus master, parity, SERR, INTx disable.
constexpr std::uint16_t kCommandWmask = 0x0547;
// One MSI capability (as QEMU's edu has: one vector, 64-bit addresses).
constexpr std::uint32_t kMsiCap = 0x40;
constexpr std::uint8_t kCapIdMsi = 0x05;
constexpr std::uint16_t kMsiFlags64Bit = 1u << 7;

void put16(std::uint8_t* p, std::uint16_t v) { std::memcpy(p, &v, 2); }
void put32(std::uint8_t* p, std::uint32_t v) { std::memcpy(p, &v, 4); }

}  // namespace

PciDevice::PciDevice(std::string bdf, IommuModel model, PciIds ids, std::uint64_t bar0_size,
                     std::uint32_t bar0_addr)
    : Device(std::move(bdf), std::move(model)),
      ids_(ids),
      bar0_size_(bar0_size),
      bar0_addr_(bar0_addr) {
  config_init();
}

void PciDevice::config_init() {
  cfg_.fill(0);
  wmask_.fill(0);
  put16(&cfg_[kVendor], ids_.vendor);
  put16(&cfg_[kDevice], ids_.device);
  put16(&cfg_[kStatus], kStatusCapList);
  cfg_[kRevision] = ids_.revision;
  cfg_[kClass] = static_cast<std::uint8_t>(ids_.class_code);
  cfg_[kClass + 1] = static_cast<std::uint8_t>(ids_.class_code >> 8);
  cfg_[kClass + 2] = static_cast<std::uint8_t>(ids_.class_code >> 16);
  put16(&cfg_[kSubVendor], ids_.subsystem_vendor);
  put16(&cfg_[kSubsystem], ids_.subsystem);
  cfg_[kCapPtr] = kMsiCap;
  cfg_[kIntPin] = 1;  // INTA#
  put16(&wmask_[kCommand], kCommandWmask);
  wmask_[kCacheLine] = 0xff;
  wmask_[kIntLine] = 0xff;
  // BAR0: 32-bit non-prefetchable memory; the low bits of a size-aligned BAR read as 0,
  // which is how software sizes it (write all-ones, read back ~(size-1)).
  put32(&cfg_[kBar0], bar0_addr_);
  put32(&wmask_[kBar0], static_cast<std::uint32_t>(~(bar0_size_ - 1)));
  cfg_[kMsiCap] = kCapIdMsi;
  cfg_[kMsiCap + 1] = 0;  // end of the capability list
  put16(&cfg_[kMsiCap + 2], kMsiFlags64Bit);
  put16(&wmask_[kMsiCap + 2], 0x0071);          // enable + multiple message enable
  put32(&wmask_[kMsiCap + 4], 0xfffffffc);      // address low
  put32(&wmask_[kMsiCap + 8], 0xffffffff);      // address high
  put16(&wmask_[kMsiCap + 12], 0xffff);         // data
}

std::uint32_t PciDevice::config_read(std::uint32_t off, unsigned size) const {
  std::uint32_t v = 0;
  std::memcpy(&v, &cfg_[off], size);
  return v;
}

void PciDevice::config_write(std::uint32_t off, std::uint32_t val, unsigned size) {
  const bool was_disabled = config_read(kCommand, 2) & kCommandIntxDisable;
  for (unsigned i = 0; i < size; ++i) {
    std::uint8_t b = static_cast<std::uint8_t>(val >> (8 * i));
    std::uint8_t m = wmask_[off + i];
    cfg_[off + i] = static_cast<std::uint8_t>((cfg_[off + i] & ~m) | (b & m));
  }
  const bool disabled = config_read(kCommand, 2) & kCommandIntxDisable;
  if (disabled != was_disabled && irq_sink_) irq_sink_->intx_disable_bit(disabled);
}

void PciDevice::set_irq_sink(IrqSink* sink) noexcept {
  std::lock_guard<std::mutex> g(mu_);
  irq_sink_ = sink;
}

bool PciDevice::intx_asserted() const noexcept {
  std::lock_guard<std::mutex> g(mu_);
  return config_read(kStatus, 2) & kStatusInterrupt;
}

void PciDevice::set_intx(bool asserted) {
  std::uint16_t status = static_cast<std::uint16_t>(config_read(kStatus, 2));
  status = asserted ? (status | kStatusInterrupt) : (status & ~kStatusInterrupt);
  put16(&cfg_[kStatus], status);
  if (irq_sink_) irq_sink_->intx_level(asserted);
}

void PciDevice::msi_notify(unsigned vector) {
  // An MSI is a memory write by the device: with bus mastering off it never leaves (QEMU
  // drops it the same way).
  if (!(config_read(kCommand, 2) & kPciCommandMaster)) return;
  if (irq_sink_) irq_sink_->msi_message(vector);
}

ssize_t PciDevice::config_rw(char* buf, std::size_t count, std::uint64_t pos,
                             bool write) noexcept {
  if (pos >= kConfigSize || count > kConfigSize - pos) return -EFAULT;
  std::lock_guard<std::mutex> g(mu_);
  std::size_t done = 0;
  while (done < count) {
    std::uint32_t off = static_cast<std::uint32_t>(pos + done);
    std::size_t left = count - done;
    unsigned size = (left >= 4 && off % 4 == 0) ? 4 : (left >= 2 && off % 2 == 0) ? 2 : 1;
    if (write) {
      std::uint32_t v = 0;
      std::memcpy(&v, buf + done, size);
      config_write(off, v, size);
    } else {
      std::uint32_t v = config_read(off, size);
      std::memcpy(buf + done, &v, size);
    }
    done += size;
  }
  return static_cast<ssize_t>(count);
}

ssize_t PciDevice::bar_rw(unsigned bar, char* buf, std::size_t count, std::uint64_t pos,
                          bool write) noexcept {
  const std::uint64_t end = bar_size(bar);
  if (end == 0 || pos >= end) return -EINVAL;
  if (count > end - pos) count = static_cast<std::size_t>(end - pos);
  std::lock_guard<std::mutex> g(mu_);
  // vfio-pci refuses BAR access while the (virtual) command register has memory off.
  std::uint16_t cmd = static_cast<std::uint16_t>(config_read(kCommand, 2));
  if (!(cmd & kPciCommandMemory)) return -EIO;
  std::size_t done = 0;
  while (done < count) {
    std::uint64_t off = pos + done;
    std::size_t left = count - done;
    unsigned size = (left >= 8 && off % 8 == 0)   ? 8
                    : (left >= 4 && off % 4 == 0) ? 4
                    : (left >= 2 && off % 2 == 0) ? 2
                                                  : 1;
    if (write) {
      std::uint64_t v = 0;
      std::memcpy(&v, buf + done, size);
      if (!stopped_) mmio_write(off, v, size);
    } else {
      std::uint64_t v = mmio_read(off, size);
      std::memcpy(buf + done, &v, size);
    }
    done += size;
  }
  return static_cast<ssize_t>(count);
}

bool PciDevice::mmio_fill(unsigned bar, std::uint64_t pos, std::uint8_t* dst,
                          std::size_t len) noexcept {
  std::lock_guard<std::mutex> g(mu_);
  if (!(config_read(kCommand, 2) & kPciCommandMemory)) return false;
  const std::uint64_t end = bar_size(bar);
  std::size_t done = 0;
  while (done < len) {
    const std::uint64_t off = pos + done;
    unsigned size = off < end ? mmio_register_size(off) : 4;
    if (off % size || len - done < size) size = 4;
    std::uint64_t v = off < end ? mmio_read(off, size) : ~0ull;  // past the BAR: all-ones
    std::memcpy(dst + done, &v, size);
    done += size;
  }
  return true;
}

void PciDevice::mmio_store(unsigned bar, std::uint64_t pos, const std::uint8_t* before,
                           const std::uint8_t* after, std::size_t len,
                           std::uint64_t fault_pos) noexcept {
  std::lock_guard<std::mutex> g(mu_);
  if (!(config_read(kCommand, 2) & kPciCommandMemory)) return;
  const std::uint64_t end = bar_size(bar);
  std::size_t done = 0;
  while (done < len && pos + done < end) {
    const std::uint64_t off = pos + done;
    unsigned size = mmio_register_size(off);
    if (off % size || len - done < size) size = 4;
    const bool changed = std::memcmp(before + done, after + done, size) != 0;
    const bool stored = fault_pos >= off && fault_pos < off + size;
    if (changed || stored) {
      std::uint64_t v = 0;
      std::memcpy(&v, after + done, size);
      if (!stopped_) mmio_write(off, v, size);
    }
    done += size;
  }
}

void PciDevice::reinit_config() noexcept {
  std::lock_guard<std::mutex> g(mu_);
  // No reset reaches the device, so an asserted INTx line stays asserted (6.12 under QEMU:
  // edu's pending interrupt still shows in the status register after close and reopen).
  const bool asserted = config_read(kStatus, 2) & kStatusInterrupt;
  config_init();
  if (asserted) {
    put16(&cfg_[kStatus], static_cast<std::uint16_t>(config_read(kStatus, 2) | kStatusInterrupt));
  }
  if (irq_sink_) irq_sink_->intx_disable_bit(false);
}

void PciDevice::enable_decoding() noexcept {
  std::lock_guard<std::mutex> g(mu_);
  const auto cmd = static_cast<std::uint16_t>(config_read(kCommand, 2) | kPciCommandMemory);
  put16(&cfg_[kCommand], cmd);
}

void PciDevice::set_stopped(bool stopped) noexcept {
  std::lock_guard<std::mutex> g(mu_);  // waits for a register access or DMA in flight
  stopped_ = stopped;
}

std::vector<std::uint8_t> PciDevice::save_state() const {
  std::vector<std::uint8_t> out;
  std::lock_guard<std::mutex> g(mu_);
  model_save(&out);
  return out;
}

int PciDevice::load_state(const std::uint8_t* data, std::size_t len) noexcept {
  std::lock_guard<std::mutex> g(mu_);
  return model_load(data, len);
}

std::uint16_t PciDevice::command() const noexcept {
  std::lock_guard<std::mutex> g(mu_);
  return static_cast<std::uint16_t>(config_read(kCommand, 2));
}

std::vector<DeviceDmaFault> PciDevice::faults() const {
  std::lock_guard<std::mutex> g(mu_);
  return {faults_.begin(), faults_.end()};
}

std::vector<DeviceDmaFault> PciDevice::take_faults() {
  std::lock_guard<std::mutex> g(mu_);
  std::vector<DeviceDmaFault> out(faults_.begin(), faults_.end());
  faults_.clear();
  return out;
}

void PciDevice::log_fault(std::uint64_t addr, std::uint64_t len, bool write, int error) {
  if (faults_.size() >= kMaxFaults) faults_.pop_front();
  faults_.push_back(DeviceDmaFault{addr, len, write, error});
}

int PciDevice::bus_read(std::uint64_t addr, void* dst, std::size_t len) {
  if (!(config_read(kCommand, 2) & kPciCommandMaster)) {
    // With bus mastering off the request never reaches the IOMMU; the device reads zeros.
    std::memset(dst, 0, len);
    log_fault(addr, len, false, -EIO);
    return -EIO;
  }
  int rc = dma_read(addr, dst, len);
  if (rc != 0) log_fault(addr, len, false, rc);
  return rc;
}

int PciDevice::master_write(std::uint64_t addr, const void* src, std::size_t len) {
  std::lock_guard<std::mutex> g(mu_);
  if (stopped_) return -EBUSY;  // a stopped device starts no DMA (nothing reaches the bus)
  return bus_write(addr, src, len);
}

int PciDevice::bus_write(std::uint64_t addr, const void* src, std::size_t len) {
  if (!(config_read(kCommand, 2) & kPciCommandMaster)) {
    log_fault(addr, len, true, -EIO);
    return -EIO;
  }
  int rc = dma_write(addr, src, len);
  if (rc != 0) log_fault(addr, len, true, rc);
  return rc;
}

}  // namespace fastmap::sim::vfio
