// Lookups of the machine's PCI devices by BDF for tests and tools, in the core's convention:
// 0 or -errno (-ENODEV: no such device; -EINVAL: not the kind of device asked for).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sim/vfio/machine.h"
#include "sim/vfio/pci_device.h"

namespace fastmap::sim::vfio {

int find_pci_device(const Machine& m, const std::string& bdf, std::shared_ptr<PciDevice>* out);

// The device's failed DMAs, oldest first (error is -errno, as in DeviceDmaFault); `clear`
// empties the log.
int device_faults(const Machine& m, const std::string& bdf, bool clear,
                  std::vector<DeviceDmaFault>* out);

// The PCI command register.
int pci_command(const Machine& m, const std::string& bdf, std::uint16_t* out);

// An edu device's 4 KiB DMA buffer.
int edu_buffer(const Machine& m, const std::string& bdf, std::vector<std::uint8_t>* out);

}  // namespace fastmap::sim::vfio
