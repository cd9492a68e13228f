#include "sim/vfio/dma_writer.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <new>
#include <system_error>

namespace fastmap::sim::vfio {

namespace {

using Clock = std::chrono::steady_clock;

// Pages written between two looks at the clock and the stop flag: bounds how long stop()
// waits and how bursty a high rate gets.
constexpr std::uint64_t kMaxBatch = 64;
// The longest sleep, so a rate change or stop is seen promptly even at low rates.
constexpr auto kMaxSleep = std::chrono::milliseconds(2);
// A thread starved of CPU for longer than this drops the backlog instead of bursting: the
// device never writes faster than its rate, it just wrote less (the stats say how much).
constexpr double kMaxBacklogSeconds = 0.05;

bool valid_rate(double r) { return std::isfinite(r) && r > 0; }

}  // namespace

int DmaWriter::create(std::shared_ptr<PciDevice> dev, std::vector<Range> ranges,
                      std::uint64_t page_size, std::uint64_t write_size, std::uint64_t seed,
                      std::unique_ptr<DmaWriter>* out) {
  if (!dev || ranges.empty() || page_size == 0 || (page_size & (page_size - 1))) return -EINVAL;
  if (write_size == 0 || write_size > page_size || write_size > kMaxWriteSize ||
      (write_size < page_size && write_size % 8)) {
    return -EINVAL;
  }
  for (const Range& r : ranges) {
    if (r.length == 0 || r.iova % page_size || r.length % page_size ||
        r.iova + (r.length - 1) < r.iova) {
      return -EINVAL;
    }
  }
  out->reset(new DmaWriter(std::move(dev), std::move(ranges), page_size, write_size, seed));
  return 0;
}

DmaWriter::DmaWriter(std::shared_ptr<PciDevice> dev, std::vector<Range> ranges,
                     std::uint64_t page_size, std::uint64_t write_size, std::uint64_t seed)
    : dev_(std::move(dev)),
      ranges_(std::move(ranges)),
      page_size_(page_size),
      write_size_(write_size),
      rng_(seed) {
  for (const Range& r : ranges_) {
    first_page_.push_back(total_pages_);
    total_pages_ += r.length / page_size_;
  }
}

DmaWriter::~DmaWriter() { stop(); }

int DmaWriter::start(double pages_per_second) {
  if (!valid_rate(pages_per_second)) return -EINVAL;
  std::lock_guard<std::mutex> g(mu_);
  if (thread_.joinable()) return -EBUSY;
  try {
    // Allocated here, on the caller's thread, so a failure is an errno and not an abort.
    buf_.resize(write_size_);
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
  rate_ = pages_per_second;
  rate_changed_ = true;
  stop_ = false;
  try {
    thread_ = std::thread([this] { run(); });
  } catch (const std::system_error&) {
    return -EAGAIN;
  }
  return 0;
}

int DmaWriter::set_rate(double pages_per_second) {
  if (!valid_rate(pages_per_second)) return -EINVAL;
  {
    std::lock_guard<std::mutex> g(mu_);
    rate_ = pages_per_second;
    rate_changed_ = true;
  }
  cv_.notify_all();
  return 0;
}

DmaWriterStats DmaWriter::stop() {
  std::thread t;
  {
    std::lock_guard<std::mutex> g(mu_);
    stop_ = true;
    t = std::move(thread_);
  }
  cv_.notify_all();
  if (t.joinable()) t.join();
  return stats();
}

DmaWriterStats DmaWriter::stats() const noexcept {
  return {pages_.load(), faults_.load(), bytes_.load()};
}

bool DmaWriter::running() const {
  std::lock_guard<std::mutex> g(mu_);
  return thread_.joinable() && !stop_;
}

std::uint64_t DmaWriter::next_random() noexcept {
  // splitmix64: small, fast, and good enough to pick pages and fill them.
  std::uint64_t z = (rng_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void DmaWriter::write_one(std::vector<std::uint8_t>& buf) {
  const std::uint64_t page = next_random() % total_pages_;
  // The range holding `page`: the last one starting at or before it.
  const auto it = std::upper_bound(first_page_.begin(), first_page_.end(), page) - 1;
  const std::size_t r = static_cast<std::size_t>(it - first_page_.begin());
  std::uint64_t iova = ranges_[r].iova + (page - *it) * page_size_;
  if (write_size_ < page_size_) {
    iova += (next_random() % ((page_size_ - write_size_) / 8 + 1)) * 8;
  }
  for (std::size_t i = 0; i < buf.size(); i += 8) {
    const std::uint64_t v = next_random();
    std::memcpy(buf.data() + i, &v, std::min<std::size_t>(8, buf.size() - i));
  }
  if (dev_->master_write(iova, buf.data(), buf.size()) == 0) {
    pages_.fetch_add(1, std::memory_order_relaxed);
    bytes_.fetch_add(buf.size(), std::memory_order_relaxed);
  } else {
    faults_.fetch_add(1, std::memory_order_relaxed);
  }
}

void DmaWriter::run() noexcept {
  try {
    loop();
  } catch (...) {
    failed_.fetch_add(1, std::memory_order_relaxed);
  }
}

void DmaWriter::loop() {
  std::vector<std::uint8_t>& buf = buf_;
  std::unique_lock<std::mutex> lk(mu_);
  Clock::time_point epoch{};
  std::uint64_t done = 0;  // pages written since epoch
  double rate = 0;
  while (!stop_) {
    if (rate_changed_) {
      epoch = Clock::now();
      done = 0;
      rate = rate_;
      rate_changed_ = false;
    }
    const auto now = Clock::now();
    auto due = static_cast<std::uint64_t>(rate * std::chrono::duration<double>(now - epoch).count());
    if (due > done &&
        static_cast<double>(due - done) > std::max<double>(kMaxBatch, rate * kMaxBacklogSeconds)) {
      epoch = now - std::chrono::duration_cast<Clock::duration>(
                        std::chrono::duration<double>(kMaxBatch / rate));
      done = 0;
      due = kMaxBatch;
    }
    if (done < due) {
      const std::uint64_t batch = std::min(due - done, kMaxBatch);
      lk.unlock();
      for (std::uint64_t i = 0; i < batch; ++i) write_one(buf);
      lk.lock();
      done += batch;
      continue;
    }
    // Sleep until the next page is due (or kMaxSleep, to notice changes).
    const auto next = epoch + std::chrono::duration_cast<Clock::duration>(
                                  std::chrono::duration<double>((done + 1) / rate));
    cv_.wait_until(lk, std::min(next, Clock::now() + kMaxSleep));
  }
}

}  // namespace fastmap::sim::vfio
