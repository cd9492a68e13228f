#include "sim/vfio/migration.h"

#include <algorithm>
#include <cstring>
#include <new>

#include "sim/vfio/pci_device.h"
#include "uapi/vfio_migration.h"

namespace fastmap::sim::vfio {

using namespace fastmap::uapi;

namespace {

constexpr std::uint32_t kNumStates = VFIO_DEVICE_STATE_PRE_COPY_P2P + 1;
constexpr std::uint32_t E = VFIO_DEVICE_STATE_ERROR, S = VFIO_DEVICE_STATE_STOP,
                        R = VFIO_DEVICE_STATE_RUNNING, SC = VFIO_DEVICE_STATE_STOP_COPY,
                        RS = VFIO_DEVICE_STATE_RESUMING, RP = VFIO_DEVICE_STATE_RUNNING_P2P,
                        PC = VFIO_DEVICE_STATE_PRE_COPY, PP = VFIO_DEVICE_STATE_PRE_COPY_P2P;

// The kernel's FSM table: [from][to] -> the next step (columns E S R SC RS RP PC PP).
constexpr std::uint32_t kFsm[kNumStates][kNumStates] = {
    /* E  */ {E, E, E, E, E, E, E, E},
    /* S  */ {E, S, R, SC, RS, RP, RP, RP},
    /* R  */ {E, RP, R, RP, RP, RP, PC, RP},
    /* SC */ {E, S, S, SC, S, S, E, E},
    /* RS */ {E, S, S, S, RS, S, S, S},
    /* RP */ {E, S, R, S, S, RP, R, PP},
    /* PC */ {E, R, R, PP, R, R, PC, PP},
    /* PP */ {E, RP, RP, SC, RP, RP, PC, PP},
};

// The VFIO_MIGRATION_* flags each state needs (ERROR: never requestable).
constexpr std::uint64_t kStateFlags[kNumStates] = {
    ~0ull,
    VFIO_MIGRATION_STOP_COPY,
    VFIO_MIGRATION_STOP_COPY,
    VFIO_MIGRATION_STOP_COPY,
    VFIO_MIGRATION_STOP_COPY,
    VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P,
    VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_PRE_COPY,
    VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY,
};

bool has_state(std::uint64_t flags, std::uint32_t s) {
  return s < kNumStates && (kStateFlags[s] & flags) == kStateFlags[s];
}

}  // namespace

int mig_next_state(std::uint64_t flags, std::uint32_t cur, std::uint32_t target,
                   std::uint32_t* next) noexcept {
  if (cur >= kNumStates || (cur != E && !has_state(flags, cur))) return -EINVAL;
  if (!has_state(flags, target)) return -EINVAL;
  std::uint32_t n = kFsm[cur][target];
  // Steps through states the device lacks are skipped (RUNNING -> STOP goes through
  // RUNNING_P2P only with P2P).
  while (n != E && !has_state(flags, n)) n = kFsm[n][target];
  *next = n;
  return n != E ? 0 : -EINVAL;
}

std::shared_ptr<MigDataFile> MigDataFile::saving(std::vector<std::uint8_t> data) {
  const std::size_t n = data.size();
  return std::shared_ptr<MigDataFile>(new MigDataFile(true, std::move(data), n));
}

std::shared_ptr<MigDataFile> MigDataFile::resuming(std::size_t limit) {
  return std::shared_ptr<MigDataFile>(new MigDataFile(false, {}, limit));
}

long MigDataFile::ioctl(unsigned long /*request*/, void* /*arg*/) noexcept {
  return -ENOTTY;  // no PRE_COPY, so no VFIO_MIG_GET_PRECOPY_INFO
}

ssize_t MigDataFile::read(void* buf, std::size_t count) noexcept {
  std::lock_guard<std::mutex> g(mu_);
  if (!saving_) return -EINVAL;  // a resuming fd is opened write-only
  if (disabled_) return -ENODEV;
  const std::size_t n = std::min(count, data_.size() - pos_);
  if (n) std::memcpy(buf, data_.data() + pos_, n);
  pos_ += n;
  return static_cast<ssize_t>(n);  // 0 at the end of the stream
}

ssize_t MigDataFile::write(const void* buf, std::size_t count) noexcept {
  std::lock_guard<std::mutex> g(mu_);
  if (saving_) return -EINVAL;  // a saving fd is opened read-only
  if (disabled_) return -ENODEV;
  if (count > limit_ - data_.size()) return -ENOMEM;  // more than any record holds
  try {
    const auto* p = static_cast<const std::uint8_t*>(buf);
    data_.insert(data_.end(), p, p + count);
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
  return static_cast<ssize_t>(count);
}

void MigDataFile::disable() noexcept {
  std::lock_guard<std::mutex> g(mu_);
  disabled_ = true;
}

std::vector<std::uint8_t> MigDataFile::data() const {
  std::lock_guard<std::mutex> g(mu_);
  return data_;
}

std::uint64_t Migration::flags() const noexcept {
  return pci_.migratable() ? VFIO_MIGRATION_STOP_COPY : 0;
}

std::uint32_t Migration::state() const {
  std::lock_guard<std::mutex> g(mu_);
  return state_;
}

std::uint64_t Migration::stop_copy_size() const {
  return pci_.save_state().size();
}

void Migration::drop_file() noexcept {
  if (file_) file_->disable();
  file_.reset();
}

void Migration::reset() noexcept {
  std::lock_guard<std::mutex> g(mu_);
  drop_file();
  state_ = VFIO_DEVICE_STATE_RUNNING;
  pci_.set_stopped(false);
}

int Migration::step(std::uint32_t next, std::shared_ptr<File>* file) {
  const std::uint32_t cur = state_;
  if (cur == R && next == S) {
    pci_.set_stopped(true);
  } else if (cur == S && next == R) {
    pci_.set_stopped(false);
  } else if (cur == S && next == SC) {
    try {
      file_ = MigDataFile::saving(pci_.save_state());
    } catch (const std::bad_alloc&) {
      return -ENOMEM;
    }
    *file = file_;
  } else if (cur == SC && next == S) {
    drop_file();
  } else if (cur == S && next == RS) {
    try {
      file_ = MigDataFile::resuming(pci_.save_state().size());
    } catch (const std::bad_alloc&) {
      return -ENOMEM;
    }
    *file = file_;
  } else if (cur == RS && next == S) {
    const std::vector<std::uint8_t> rec = file_->data();
    const int rc = pci_.load_state(rec.data(), rec.size());
    if (rc != 0) return rc;
    drop_file();
  } else {
    return -EINVAL;  // an arc this device has no step for
  }
  state_ = next;
  return 0;
}

int Migration::set_state(std::uint32_t target, std::shared_ptr<File>* file) {
  std::lock_guard<std::mutex> g(mu_);
  file->reset();
  while (state_ != target) {
    std::uint32_t next = 0;
    int rc = mig_next_state(flags(), state_, target, &next);
    if (rc != 0) return rc;
    file->reset();
    rc = step(next, file);
    if (rc != 0) return rc;
    // Only the last step of an arc may hand out a data fd.
    if (*file && state_ != target) {
      file->reset();
      return -EINVAL;
    }
  }
  return 0;
}

}  // namespace fastmap::sim::vfio
