// VFIO migration v2 of a simulated device (the driver side of vfio's mig_ops): the device
// state machine of enum vfio_device_mig_state with the STOP_COPY and PRE_COPY states (STOP,
// RUNNING, STOP_COPY, RESUMING, PRE_COPY; no P2P), the arcs vfio_mig_get_next_state allows,
// and the data fds.
//
// RUNNING -> STOP stops the device (register writes dropped, no DMA); STOP -> STOP_COPY
// snapshots the model's state into a saving fd that read(2) drains; STOP -> RESUMING
// opens an empty resuming fd that write(2) fills; RESUMING -> STOP loads what was written
// (an unacceptable stream fails the arc with EINVAL and the device stays in RESUMING).
// RUNNING -> PRE_COPY opens a saving fd while the device keeps running: it streams the
// model's record as the initial data, then patches of what changed since it was read;
// VFIO_MIG_GET_PRECOPY_INFO tells how much of each is left. PRE_COPY -> STOP_COPY stops the
// device and queues the last patch on the same fd (no new fd); PRE_COPY -> RUNNING ends it.
// Leaving the saving group or RESUMING disables the fd: read/write then fail with ENODEV.
// A function reset (VFIO_DEVICE_RESET, open, last close) returns the device to RUNNING.
//
// The stream: the model's record (exactly what a STOP_COPY-only session sends, so such a
// stream stays valid), then zero or more patches, each a header of three little-endian u32
// (kPatchMagic, offset into the record, length) and `length` bytes replacing the record's.
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

class Migration;

inline constexpr std::uint32_t kPatchMagic = 0x5047494d;  // "MIGP"
inline constexpr std::size_t kPatchHeader = 12;
// Dirty tracking granularity over the record: changed bytes are sent in whole blocks.
inline constexpr std::size_t kPatchBlock = 64;

// The patches that turn `from` into `to` (records of one size), appended to `out`; with
// `out` null, only their encoded length.
std::size_t encode_patches(const std::vector<std::uint8_t>& from,
                           const std::vector<std::uint8_t>& to, std::vector<std::uint8_t>* out);

// A migration data fd: a stream (no pread/pwrite: ESPIPE).
class MigDataFile final : public File {
 public:
  // A saving fd: STOP_COPY's (the record, then end of stream) or PRE_COPY's (the record
  // taken now, then patches read from the running `pci`). `mig` answers whether the device
  // is in a PRE_COPY state (it owns the fd's session; the Machine outlives every file).
  static std::shared_ptr<MigDataFile> stop_copy(Migration* mig, std::vector<std::uint8_t> rec);
  static std::shared_ptr<MigDataFile> pre_copy(Migration* mig, std::shared_ptr<PciDevice> pci,
                                               std::vector<std::uint8_t> rec);
  // A resuming fd for a record of `record_size` bytes.
  static std::shared_ptr<MigDataFile> resuming(std::size_t record_size);

  long ioctl(unsigned long request, void* arg) noexcept override;
  ssize_t pread(void*, std::size_t, std::uint64_t) noexcept override { return -ESPIPE; }
  ssize_t pwrite(const void*, std::size_t, std::uint64_t) noexcept override { return -ESPIPE; }
  ssize_t read(void* buf, std::size_t count) noexcept override;
  ssize_t write(const void* buf, std::size_t count) noexcept override;

  void disable() noexcept;
  // PRE_COPY -> STOP_COPY, the device stopped: queue the patch of what changed since the
  // last read; the stream then ends for good once drained. 0 or -ENOMEM.
  int enter_stop_copy() noexcept;
  // VFIO_MIG_GET_PRECOPY_INFO's figures (the device is in PRE_COPY): 0 or -ENODEV/-ENOMEM.
  int precopy_info(std::uint64_t* initial, std::uint64_t* dirty) noexcept;
  // The record a resuming stream built: 0, or -EINVAL for an incomplete or broken stream.
  int resumed_record(std::vector<std::uint8_t>* out) const;

 private:
  enum class Kind : unsigned char { kStopCopy, kPreCopy, kResuming };
  MigDataFile(Kind kind, Migration* mig, std::shared_ptr<PciDevice> pci,
              std::vector<std::uint8_t> rec);
  ssize_t consume(const std::uint8_t* p, std::size_t count);
  // Saving, mu_ held: drop what was read, then queue patches of what the device changed
  // since the destination's copy (sent_). 0 or -ENOMEM.
  int queue_changes() noexcept;

  mutable std::mutex mu_;  // taken after Migration's
  Kind kind_;
  Migration* const mig_;
  const std::shared_ptr<PciDevice> pci_;  // PRE_COPY's running device
  bool disabled_ = false;
  // Saving: the bytes queued for read(2), what the destination has once it read them all,
  // and how much of the initial record is still unread.
  std::vector<std::uint8_t> out_;
  std::size_t pos_ = 0;
  std::vector<std::uint8_t> sent_;
  std::size_t initial_left_ = 0;
  // Resuming: the record being rebuilt (sent_ holds it), the patch header being read and
  // the patch being applied.
  std::size_t record_size_ = 0;
  std::uint8_t hdr_[kPatchHeader] = {};
  std::size_t hdr_len_ = 0;
  std::size_t patch_off_ = 0, patch_left_ = 0;
  bool broken_ = false;
};

class Migration {
 public:
  explicit Migration(std::shared_ptr<PciDevice> pci) : pci_(std::move(pci)) {}

  // VFIO_MIGRATION_* the device offers (0: no mig_ops).
  std::uint64_t flags() const noexcept;
  std::uint32_t state() const;
  // migration_set_state: 0 or -errno; *file is the arc's data fd when it has one.
  int set_state(std::uint32_t target, std::shared_ptr<File>* file);
  // migration_get_data_size: the STOP_COPY stream's length.
  std::uint64_t stop_copy_size() const;
  // The function was reset: RUNNING, the device started, any data fd disabled.
  void reset() noexcept;
  // VFIO_MIG_GET_PRECOPY_INFO on saving fd `f`: -EINVAL outside the PRE_COPY states.
  int precopy_info(MigDataFile& f, std::uint64_t* initial, std::uint64_t* dirty);

 private:
  int step(std::uint32_t next, std::shared_ptr<File>* file);
  void drop_file() noexcept;

  const std::shared_ptr<PciDevice> pci_;
  mutable std::mutex mu_;  // the driver's state_mutex
  std::uint32_t state_ = 2;  // VFIO_DEVICE_STATE_RUNNING
  std::shared_ptr<MigDataFile> file_;
};

}  // namespace fastmap::sim::vfio
