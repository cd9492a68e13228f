#include "sim/vfio/migration.h"

#include <algorithm>
#include <cstring>
#include <new>

#include "sim/core/user_memory.h"
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

namespace {

template <typename T>
void put(std::vector<std::uint8_t>* out, T v) {
  std::uint8_t b[sizeof v];
  std::memcpy(b, &v, sizeof v);
  out->insert(out->end(), b, b + sizeof v);
}

std::uint32_t u32_at(const std::uint8_t* p) {
  std::uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

std::uint64_t uptr(const void* p) { return reinterpret_cast<std::uint64_t>(p); }

}  // namespace

std::size_t encode_patches(const std::vector<std::uint8_t>& from,
                           const std::vector<std::uint8_t>& to, std::vector<std::uint8_t>* out) {
  const std::size_t n = std::min(from.size(), to.size());
  auto dirty = [&](std::size_t b) {
    const std::size_t len = std::min(kPatchBlock, n - b);
    return std::memcmp(from.data() + b, to.data() + b, len) != 0;
  };
  std::size_t total = 0;
  for (std::size_t b = 0; b < n;) {
    if (!dirty(b)) {
      b += kPatchBlock;
      continue;
    }
    // One patch per run of dirty blocks.
    std::size_t e = b + kPatchBlock;
    while (e < n && dirty(e)) e += kPatchBlock;
    e = std::min(e, n);
    total += kPatchHeader + (e - b);
    if (out) {
      put<std::uint32_t>(out, kPatchMagic);
      put<std::uint32_t>(out, static_cast<std::uint32_t>(b));
      put<std::uint32_t>(out, static_cast<std::uint32_t>(e - b));
      out->insert(out->end(), to.begin() + static_cast<std::ptrdiff_t>(b),
                  to.begin() + static_cast<std::ptrdiff_t>(e));
    }
    b = e;
  }
  return total;
}

MigDataFile::MigDataFile(Kind kind, Migration* mig, std::shared_ptr<PciDevice> pci,
                         std::vector<std::uint8_t> rec)
    : kind_(kind), mig_(mig), pci_(std::move(pci)) {
  if (kind == Kind::kResuming) {
    record_size_ = rec.size();
    sent_.reserve(record_size_);
    return;
  }
  out_ = rec;
  initial_left_ = rec.size();
  sent_ = std::move(rec);
}

std::shared_ptr<MigDataFile> MigDataFile::stop_copy(Migration* mig,
                                                     std::vector<std::uint8_t> rec) {
  return std::shared_ptr<MigDataFile>(new MigDataFile(Kind::kStopCopy, mig, nullptr,
                                                      std::move(rec)));
}

std::shared_ptr<MigDataFile> MigDataFile::pre_copy(Migration* mig, std::shared_ptr<PciDevice> pci,
                                                   std::vector<std::uint8_t> rec) {
  return std::shared_ptr<MigDataFile>(new MigDataFile(Kind::kPreCopy, mig, std::move(pci),
                                                      std::move(rec)));
}

std::shared_ptr<MigDataFile> MigDataFile::resuming(std::size_t record_size) {
  return std::shared_ptr<MigDataFile>(new MigDataFile(
      Kind::kResuming, nullptr, nullptr, std::vector<std::uint8_t>(record_size)));
}

long MigDataFile::ioctl(unsigned long request, void* arg) noexcept {
  // Only the saving fd has an ioctl (the drivers' resuming fops have none).
  if (request != VFIO_MIG_GET_PRECOPY_INFO || kind_ == Kind::kResuming) return -ENOTTY;
  vfio_precopy_info info{};
  if (copy_from_user(&info, uptr(arg), sizeof info)) return -EFAULT;
  if (info.argsz < sizeof info) return -EINVAL;
  // argsz and flags go back as given (no flags are defined).
  int rc;
  try {
    rc = mig_->precopy_info(*this, &info.initial_bytes, &info.dirty_bytes);
  } catch (const std::bad_alloc&) {
    rc = -ENOMEM;
  }
  if (rc != 0) return rc;
  return copy_to_user(uptr(arg), &info, sizeof info) ? -EFAULT : 0;
}

int MigDataFile::precopy_info(std::uint64_t* initial, std::uint64_t* dirty) noexcept {
  std::lock_guard<std::mutex> g(mu_);
  if (disabled_ || kind_ != Kind::kPreCopy) return -ENODEV;  // an earlier session's fd
  try {
    // Queued patches not read yet, and what the device changed since it was last read.
    const std::size_t queued = out_.size() - pos_ - initial_left_;
    *initial = initial_left_;
    *dirty = queued + encode_patches(sent_, pci_->save_state(), nullptr);
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
  return 0;
}

int MigDataFile::enter_stop_copy() noexcept {
  std::lock_guard<std::mutex> g(mu_);
  if (const int rc = queue_changes()) return rc;
  kind_ = Kind::kStopCopy;
  return 0;
}

int MigDataFile::queue_changes() noexcept {
  try {
    out_.erase(out_.begin(), out_.begin() + static_cast<std::ptrdiff_t>(pos_));
    pos_ = 0;
    std::vector<std::uint8_t> now = pci_->save_state();
    encode_patches(sent_, now, &out_);
    sent_ = std::move(now);
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
  return 0;
}

ssize_t MigDataFile::read(void* buf, std::size_t count) noexcept {
  std::lock_guard<std::mutex> g(mu_);
  if (kind_ == Kind::kResuming) return -EINVAL;  // a resuming fd is opened write-only
  if (disabled_) return -ENODEV;
  if (pos_ == out_.size() && kind_ == Kind::kPreCopy) {
    // Everything queued was read: send what the running device changed since.
    if (const int rc = queue_changes()) return rc;
    // PRE_COPY's temporary end of stream: nothing changed (yet).
    if (out_.empty()) return -ENOMSG;
  }
  const std::size_t n = std::min(count, out_.size() - pos_);
  if (n) std::memcpy(buf, out_.data() + pos_, n);
  pos_ += n;
  initial_left_ -= std::min(initial_left_, n);
  return static_cast<ssize_t>(n);  // 0 at STOP_COPY's end of stream
}

ssize_t MigDataFile::consume(const std::uint8_t* p, std::size_t count) {
  std::size_t done = 0;
  while (done < count) {
    const std::size_t left = count - done;
    if (sent_.size() < record_size_) {  // the record itself
      const std::size_t n = std::min(left, record_size_ - sent_.size());
      sent_.insert(sent_.end(), p + done, p + done + n);
      done += n;
    } else if (patch_left_) {
      const std::size_t n = std::min(left, patch_left_);
      std::memcpy(sent_.data() + patch_off_, p + done, n);
      patch_off_ += n;
      patch_left_ -= n;
      done += n;
    } else {
      const std::size_t n = std::min(left, kPatchHeader - hdr_len_);
      std::memcpy(hdr_ + hdr_len_, p + done, n);
      hdr_len_ += n;
      done += n;
      if (hdr_len_ < kPatchHeader) continue;
      hdr_len_ = 0;
      const std::uint32_t off = u32_at(hdr_ + 4), len = u32_at(hdr_ + 8);
      if (u32_at(hdr_) != kPatchMagic || len == 0 || off > record_size_ ||
          len > record_size_ - off) {
        broken_ = true;  // not a stream this device's saving side writes
        return -EINVAL;
      }
      patch_off_ = off;
      patch_left_ = len;
    }
  }
  return static_cast<ssize_t>(count);
}

ssize_t MigDataFile::write(const void* buf, std::size_t count) noexcept {
  std::lock_guard<std::mutex> g(mu_);
  if (kind_ != Kind::kResuming) return -EINVAL;  // a saving fd is opened read-only
  if (disabled_) return -ENODEV;
  if (broken_) return -EINVAL;
  try {
    return consume(static_cast<const std::uint8_t*>(buf), count);
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  }
}

void MigDataFile::disable() noexcept {
  std::lock_guard<std::mutex> g(mu_);
  disabled_ = true;
}

int MigDataFile::resumed_record(std::vector<std::uint8_t>* out) const {
  std::lock_guard<std::mutex> g(mu_);
  if (broken_ || sent_.size() != record_size_ || hdr_len_ || patch_left_) return -EINVAL;
  *out = sent_;
  return 0;
}

std::uint64_t Migration::flags() const noexcept {
  return pci_->migratable() ? VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_PRE_COPY : 0;
}

std::uint32_t Migration::state() const {
  std::lock_guard<std::mutex> g(mu_);
  return state_;
}

std::uint64_t Migration::stop_copy_size() const {
  return pci_->save_state().size();
}

void Migration::drop_file() noexcept {
  if (file_) file_->disable();
  file_.reset();
}

void Migration::reset() noexcept {
  std::lock_guard<std::mutex> g(mu_);
  drop_file();
  state_ = VFIO_DEVICE_STATE_RUNNING;
  pci_->set_stopped(false);
}

int Migration::precopy_info(MigDataFile& f, std::uint64_t* initial, std::uint64_t* dirty) {
  std::lock_guard<std::mutex> g(mu_);
  if (state_ != PC && state_ != PP) return -EINVAL;
  return f.precopy_info(initial, dirty);
}

int Migration::step(std::uint32_t next, std::shared_ptr<File>* file) {
  const std::uint32_t cur = state_;
  if (cur == R && next == S) {
    pci_->set_stopped(true);
  } else if (cur == S && next == R) {
    pci_->set_stopped(false);
  } else if (cur == S && next == SC) {
    try {
      file_ = MigDataFile::stop_copy(this, pci_->save_state());
    } catch (const std::bad_alloc&) {
      return -ENOMEM;
    }
    *file = file_;
  } else if (cur == R && next == PC) {
    try {
      file_ = MigDataFile::pre_copy(this, pci_, pci_->save_state());
    } catch (const std::bad_alloc&) {
      return -ENOMEM;
    }
    *file = file_;
  } else if (cur == PC && next == SC) {
    // The same session goes on: the device stops, the rest follows on the fd the user
    // already has (the arc returns none).
    pci_->set_stopped(true);
    const int rc = file_->enter_stop_copy();
    if (rc != 0) {
      pci_->set_stopped(false);
      return rc;
    }
  } else if ((cur == SC && next == S) || (cur == PC && next == R)) {
    drop_file();
  } else if (cur == S && next == RS) {
    try {
      file_ = MigDataFile::resuming(pci_->save_state().size());
    } catch (const std::bad_alloc&) {
      return -ENOMEM;
    }
    *file = file_;
  } else if (cur == RS && next == S) {
    std::vector<std::uint8_t> rec;
    int rc = file_->resumed_record(&rec);
    if (rc == 0) rc = pci_->load_state(rec.data(), rec.size());
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
