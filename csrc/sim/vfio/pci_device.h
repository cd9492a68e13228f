// A simulated conventional PCI function as vfio-pci exposes it: 256 bytes of config space
// (IDs, the command register that gates memory decoding and bus mastering, BAR0, an MSI
// capability) and a memory BAR0 whose registers a device model implements. DMA goes
// through the Device's current Domain and is allowed only while bus mastering is on.
#pragma once

#include <sys/types.h>

#include <cerrno>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "sim/iommu/device.h"

namespace fastmap::sim::vfio {

inline constexpr std::uint16_t kPciCommandIo = 1u << 0;
inline constexpr std::uint16_t kPciCommandMemory = 1u << 1;
inline constexpr std::uint16_t kPciCommandMaster = 1u << 2;

// One DMA the device could not complete, as the device saw it.
struct DeviceDmaFault {
  std::uint64_t addr;  // bus address (IOVA) the device used
  std::uint64_t len;
  bool write;  // true: device to memory
  // -EFAULT / -EPERM: the IOMMU refused (also in the domain's fault log); -EIO: bus
  // mastering is off, the transfer never left the device; -ERANGE: the device's own
  // bounds check refused it (edu buffer range).
  int error;
};

struct PciIds {
  std::uint16_t vendor = 0x1234;
  std::uint16_t device = 0x11e8;
  std::uint8_t revision = 0x10;
  std::uint32_t class_code = 0x00ff00;  // base class 0xff (PCI_CLASS_OTHERS)
  // QEMU gives every device Red Hat's subsystem IDs.
  std::uint16_t subsystem_vendor = 0x1af4;
  std::uint16_t subsystem = 0x1100;
};

// Where a device's interrupts go (vfio-pci's interrupt handling, sim/vfio/irqs.h). Called
// with the device's lock held.
class IrqSink {
 public:
  virtual ~IrqSink() = default;
  virtual void intx_level(bool asserted) noexcept = 0;
  virtual void msi_message(unsigned vector) noexcept = 0;
  // The INTx-disable bit of the command register changed (a config write or a reset).
  virtual void intx_disable_bit(bool set) noexcept = 0;
};

class PciDevice : public Device {
 public:
  static constexpr std::uint32_t kConfigSize = 256;  // conventional PCI

  PciDevice(std::string bdf, IommuModel model, PciIds ids, std::uint64_t bar0_size,
            std::uint32_t bar0_addr);
  ~PciDevice() override = default;

  const PciIds& ids() const noexcept { return ids_; }
  std::uint64_t bar_size(unsigned bar) const noexcept { return bar == 0 ? bar0_size_ : 0; }

  // vfio-pci region accesses; `pos` is the offset inside the region. Bytes moved or
  // -errno: config space beyond its end -EFAULT; a BAR access past the end -EINVAL, with
  // memory decoding off -EIO. Accesses are split as vfio-pci splits them (naturally
  // aligned 4/2/1 bytes for config, 8/4/2/1 for BARs).
  ssize_t config_rw(char* buf, std::size_t count, std::uint64_t pos, bool write) noexcept;
  ssize_t bar_rw(unsigned bar, char* buf, std::size_t count, std::uint64_t pos,
                 bool write) noexcept;

  // A BAR mapped into the process (sim/core/mmio_trap.h). fill: the bytes of
  // [pos, pos+len) as register reads return them now (false with memory decoding off);
  // store: one instruction changed `after` from `before`: each register whose bytes changed,
  // and the one holding `fault_pos` (a store that may have rewritten the same value), is
  // written with its new value.
  bool mmio_fill(unsigned bar, std::uint64_t pos, std::uint8_t* dst, std::size_t len) noexcept;
  void mmio_store(unsigned bar, std::uint64_t pos, const std::uint8_t* before,
                  const std::uint8_t* after, std::size_t len, std::uint64_t fault_pos) noexcept;

  // vfio-pci's first open and last close of a function with no reset method (edu has
  // neither FLR nor PM reset, so vfio-pci never resets it): the config space vfio-pci
  // presents is built afresh (memory decoding and bus mastering off, INTx-disable clear),
  // while the device itself keeps its state: its registers, its buffer, and its INTx line,
  // which the status register's interrupt bit keeps showing.
  void reinit_config() noexcept;
  // pci_enable_device at vfio-pci's open: memory decoding on for the memory BAR (bus
  // mastering stays off: vfio-pci clears it before enabling).
  void enable_decoding() noexcept;

  std::uint16_t command() const noexcept;

  // Interrupts. The sink may be null (nothing receives them); it must outlive its setting.
  void set_irq_sink(IrqSink* sink) noexcept;
  std::uint8_t interrupt_pin() const noexcept { return 1; }  // INTA#
  unsigned msi_vectors() const noexcept { return 1; }       // the MSI capability's count
  // MSI enabled on the function itself (the host enables it for vfio's SET_IRQS): device
  // models then send messages instead of asserting INTx.
  void set_msi_enabled(bool on) noexcept { msi_enabled_ = on; }
  bool msi_enabled() const noexcept { return msi_enabled_; }
  bool intx_asserted() const noexcept;
  // Bus-master DMA started by something other than the register interface (the background
  // DMA writer): as a device model's own bus_write, under the device lock.
  int master_write(std::uint64_t addr, const void* src, std::size_t len);
  // VFIO migration (sim/vfio/migration.h). A model that can migrate overrides model_save and
  // model_load. Stopped (the STOP, STOP_COPY and RESUMING states): register writes are
  // dropped and the device starts no DMA, so its state cannot change.
  virtual bool migratable() const noexcept { return false; }
  void set_stopped(bool stopped) noexcept;
  bool stopped() const noexcept { return stopped_; }
  // The model's state as one record, and its restore from one: 0 or -EINVAL (a record the
  // model does not accept; the device is unchanged then).
  std::vector<std::uint8_t> save_state() const;
  int load_state(const std::uint8_t* data, std::size_t len) noexcept;
  // The device's DMA fault log, oldest first; take_ empties it.
  std::vector<DeviceDmaFault> faults() const;
  std::vector<DeviceDmaFault> take_faults();

 protected:
  // The device model: one access of `size` (1, 2, 4 or 8) bytes at BAR0 offset `off`,
  // called with mu_ held.
  virtual std::uint64_t mmio_read(std::uint64_t off, unsigned size) = 0;
  virtual void mmio_write(std::uint64_t off, std::uint64_t val, unsigned size) = 0;
  // The width of the register at `off` (4 or 8), for accesses through a mapping; reads
  // through a mapping must have no side effects (fill reads every register of a page).
  virtual unsigned mmio_register_size(std::uint64_t /*off*/) const { return 4; }
  // Migration record of the model's state, with mu_ held (see save_state / load_state).
  virtual void model_save(std::vector<std::uint8_t>* /*out*/) const {}
  virtual int model_load(const std::uint8_t* /*data*/, std::size_t /*len*/) { return -EINVAL; }

  // Bus-master DMA for device models (called with mu_ held): 0 or -errno, failures logged.
  int bus_read(std::uint64_t addr, void* dst, std::size_t len);
  int bus_write(std::uint64_t addr, const void* src, std::size_t len);
  void log_fault(std::uint64_t addr, std::uint64_t len, bool write, int error);
  // For device models, with mu_ held: drive the INTx line (reflected in the status
  // register's interrupt bit), or send MSI message `vector` (lost with bus mastering off).
  void set_intx(bool asserted);
  void msi_notify(unsigned vector);

  mutable std::mutex mu_;  // config space, device registers, the fault log

 private:
  void config_init();
  std::uint32_t config_read(std::uint32_t off, unsigned size) const;
  void config_write(std::uint32_t off, std::uint32_t val, unsigned size);

  PciIds ids_;
  std::uint64_t bar0_size_;
  std::uint32_t bar0_addr_;
  std::array<std::uint8_t, kConfigSize> cfg_{};
  std::array<std::uint8_t, kConfigSize> wmask_{};  // writable bits of each byte
  std::deque<DeviceDmaFault> faults_;
  IrqSink* irq_sink_ = nullptr;  // guarded by mu_
  std::atomic<bool> msi_enabled_{false};
  std::atomic<bool> stopped_{false};
};

}  // namespace fastmap::sim::vfio
