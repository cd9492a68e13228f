// A background DMA writer: a thread that makes a simulated PCI device write random pages of
// chosen IOVA ranges at a set rate, as a NIC filling receive buffers would.
//
// It exists for live-migration demos and tests: the writes go through the device's current
// IOMMU domain exactly as the edu DMA engine's do (bus mastering must be on, the IOVA must
// be mapped writeable), so every write sets the dirty bit of the IOPTE it lands in while
// dirty tracking is on. A write that faults (unmapped, read-only, bus mastering off) is
// counted and the writer carries on.
//
// Each write fills `write_size` bytes of one page with fresh pseudo-random bytes (at a
// random 8-byte-aligned offset when smaller than the page), so a copy that missed the write
// cannot match by accident. Pages are drawn uniformly over all ranges.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "sim/vfio/pci_device.h"

namespace fastmap::sim::vfio {

struct DmaWriterStats {
  std::uint64_t pages = 0;   // writes that reached memory
  std::uint64_t faults = 0;  // writes the device or the IOMMU refused
  std::uint64_t bytes = 0;   // bytes written by the successful writes
};

class DmaWriter {
 public:
  struct Range {
    std::uint64_t iova;
    std::uint64_t length;
  };

  // 0, or -EINVAL: no ranges, a range empty, unaligned to page_size or wrapping; page_size
  // not a power of two; write_size 0, not a multiple of 8 below page_size, above it, or
  // above kMaxWriteSize (the writer's buffer is write_size bytes).
  static constexpr std::uint64_t kMaxWriteSize = std::uint64_t{1} << 30;
  static int create(std::shared_ptr<PciDevice> dev, std::vector<Range> ranges,
                    std::uint64_t page_size, std::uint64_t write_size, std::uint64_t seed,
                    std::unique_ptr<DmaWriter>* out);
  ~DmaWriter();
  DmaWriter(const DmaWriter&) = delete;
  DmaWriter& operator=(const DmaWriter&) = delete;

  // Start writing `pages_per_second` pages a second. -EINVAL for a rate that is not a
  // positive finite number, -EBUSY when already running, -ENOMEM when the write buffer
  // cannot be allocated, -EAGAIN when no thread can be created (pids limit, ulimit -v).
  int start(double pages_per_second);
  // Change the rate of a running or stopped writer (counted afresh from now). -EINVAL as
  // for start.
  int set_rate(double pages_per_second);
  // Stop and join the thread (nothing is written after it returns); idempotent.
  DmaWriterStats stop();
  DmaWriterStats stats() const noexcept;
  bool running() const;
  std::uint64_t total_pages() const noexcept { return total_pages_; }

 private:
  DmaWriter(std::shared_ptr<PciDevice> dev, std::vector<Range> ranges, std::uint64_t page_size,
            std::uint64_t write_size, std::uint64_t seed);
  // The thread's body: nothing may escape a thread (std::terminate), so loop() failing
  // just ends the writing (counted in `failed_`).
  void run() noexcept;
  void loop();
  void write_one(std::vector<std::uint8_t>& buf);
  std::uint64_t next_random() noexcept;

  std::shared_ptr<PciDevice> dev_;
  std::vector<Range> ranges_;
  std::vector<std::uint64_t> first_page_;  // prefix sums: ranges_[i] starts at page first_page_[i]
  std::uint64_t page_size_;
  std::uint64_t write_size_;
  std::uint64_t total_pages_ = 0;
  std::uint64_t rng_;  // splitmix64 state, used by the writer thread only

  mutable std::mutex mu_;  // rate_, rate_changed_, stop_, thread_
  std::condition_variable cv_;
  double rate_ = 0;
  bool rate_changed_ = false;
  bool stop_ = false;
  std::thread thread_;
  std::vector<std::uint8_t> buf_;  // write_size_ bytes, allocated by start() on its caller

  std::atomic<std::uint64_t> pages_{0}, faults_{0}, bytes_{0}, failed_{0};
};

}  // namespace fastmap::sim::vfio
