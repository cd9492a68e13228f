// VFIO migration v2 of a simulated device (the driver side of vfio's mig_ops): the device
// state machine of enum vfio_device_mig_state with the STOP_COPY states (STOP, RUNNING,
// STOP_COPY, RESUMING, ERROR), the arcs vfio_mig_get_next_state allows, and the data fds.
//
// RUNNING -> STOP stops the device (register writes dropped, no DMA); STOP -> STOP_COPY
// snapshots the model's state into a saving fd that read(2) drains; STOP -> RESUMING
// opens an empty resuming fd that write(2) fills; RESUMING -> STOP loads what was written
// (an unacceptable record fails the arc with EINVAL and the device stays in RESUMING).
// Leaving STOP_COPY or RESUMING disables the fd: read/write then fail with ENODEV.
// A function reset (VFIO_DEVICE_RESET, open, last close) returns the device to RUNNING.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "sim/core/file.h"

namespace fastmap::sim::vfio {

class PciDevice;

// vfio_mig_get_next_state: the next step from `cur` toward `target` for a device with
// `flags` (VFIO_MIGRATION_*): 0, or -EINVAL for a state the device does not have, ERROR as
// the target, or no way there.
int mig_next_state(std::uint64_t flags, std::uint32_t cur, std::uint32_t target,
                   std::uint32_t* next) noexcept;

// A migration data fd: a stream (no pread/pwrite: ESPIPE).
class MigDataFile final : public File {
 public:
  // A saving fd over `data`, or a resuming fd accepting up to `limit` bytes.
  static std::shared_ptr<MigDataFile> saving(std::vector<std::uint8_t> data);
  static std::shared_ptr<MigDataFile> resuming(std::size_t limit);

  long ioctl(unsigned long request, void* arg) noexcept override;
  ssize_t pread(void*, std::size_t, std::uint64_t) noexcept override { return -ESPIPE; }
  ssize_t pwrite(const void*, std::size_t, std::uint64_t) noexcept override { return -ESPIPE; }
  ssize_t read(void* buf, std::size_t count) noexcept override;
  ssize_t write(const void* buf, std::size_t count) noexcept override;

  void disable() noexcept;
  std::vector<std::uint8_t> data() const;

 private:
  MigDataFile(bool saving, std::vector<std::uint8_t> data, std::size_t limit)
      : saving_(saving), data_(std::move(data)), limit_(limit) {}

  mutable std::mutex mu_;
  const bool saving_;
  std::vector<std::uint8_t> data_;
  std::size_t limit_;
  std::size_t pos_ = 0;
  bool disabled_ = false;
};

class Migration {
 public:
  explicit Migration(PciDevice& pci) : pci_(pci) {}

  // VFIO_MIGRATION_* the device offers (0: no mig_ops).
  std::uint64_t flags() const noexcept;
  std::uint32_t state() const;
  // migration_set_state: 0 or -errno; *file is the arc's data fd when it has one.
  int set_state(std::uint32_t target, std::shared_ptr<File>* file);
  // migration_get_data_size: the STOP_COPY stream's length.
  std::uint64_t stop_copy_size() const;
  // The function was reset: RUNNING, the device started, any data fd disabled.
  void reset() noexcept;

 private:
  int step(std::uint32_t next, std::shared_ptr<File>* file);
  void drop_file() noexcept;

  PciDevice& pci_;
  mutable std::mutex mu_;  // the driver's state_mutex
  std::uint32_t state_ = 2;  // VFIO_DEVICE_STATE_RUNNING
  std::shared_ptr<MigDataFile> file_;
};

}  // namespace fastmap::sim::vfio
