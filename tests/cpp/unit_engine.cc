// C++ unit-level run of the engine and the simulated kernel without Python, built with
// ASan+UBSan and LeakSanitizer on (make test-cpp): the allocator, the batch mapper against
// the simulator (serial, coalesced and threaded, with rollback), the dirty harvester over a
// mock domain, the VFIO cdev path, and teardown with objects still live. Python's own leaks
// force detect_leaks=0 for the extension's test run; here every allocation the engine and
// the simulator make must be freed by the time the process exits.
#include <sys/mman.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

#include "engine/bitmap_ops.h"
#include "engine/dirty_harvester.h"
#include "engine/iova_allocator.h"
#include "engine/map_engine.h"
#include "sim/core/user_memory.h"
#include "sim/sim_kernel.h"
#include "sim/vfio/machine.h"
#include "uapi/iommufd.h"
#include "uapi/iommufd_test.h"
#include "uapi/vfio.h"

namespace {

using namespace fastmap;
using namespace fastmap::uapi;

int g_failures = 0;

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                            \
    }                                                                          \
  } while (0)

constexpr std::uint64_t kPage = 4096;

struct Buffer {
  std::size_t len;
  unsigned char* p;
  explicit Buffer(std::size_t n)
      : len(n),
        p(static_cast<unsigned char*>(
            ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))) {
    if (p == MAP_FAILED) std::abort();
    std::memset(p, 0x11, n);
  }
  ~Buffer() { ::munmap(p, len); }
  std::uint64_t va(std::size_t off = 0) const { return reinterpret_cast<std::uint64_t>(p) + off; }
};

// A user copy that runs off an accessible page into a PROT_NONE one faults there, and what
// lies past the fault is not the caller's buffer: poisoned memory beyond it must not be
// reported. (Under the fuzzer's threads it was another thread's stack or heap block, poisoned
// and unpoisoned as the check ran, and ASan aborted on a race.)
void test_user_copy_stops_at_fault() {
  Buffer b(3 * kPage);
  CHECK(::mprotect(b.p + kPage, kPage, PROT_NONE) == 0);
#if defined(__SANITIZE_ADDRESS__)
  ASAN_POISON_MEMORY_REGION(b.p + 2 * kPage, kPage);
#endif
  std::vector<unsigned char> tmp(2 * kPage, 0x22);
  CHECK(sim::copy_to_user(b.va(kPage - 16), tmp.data(), tmp.size()) == -EFAULT);
  CHECK(sim::copy_from_user(tmp.data(), b.va(kPage - 16), tmp.size()) == -EFAULT);
  CHECK(sim::clear_user(b.va(kPage - 16), tmp.size()) == -EFAULT);
  CHECK(sim::copy_to_user(b.va(kPage - 16), tmp.data(), 16) == 0);  // the page itself is fine
#if defined(__SANITIZE_ADDRESS__)
  ASAN_UNPOISON_MEMORY_REGION(b.p + 2 * kPage, kPage);
#endif
}

std::uint32_t ioas_alloc(Kernel& k, int fd) {
  iommu_ioas_alloc a{sizeof(a), 0, 0};
  CHECK(k.ioctl(fd, IOMMU_IOAS_ALLOC, &a) == 0);
  return a.out_ioas_id;
}

void test_allocator() {
  engine::IovaAllocator alloc;
  const engine::IovaRange allowed[] = {{1ull << 20, (1ull << 40) - 1}};
  CHECK(alloc.restrict_to(allowed) == 0);
  const std::uint64_t huge[] = {2ull << 20, 1ull << 30};
  CHECK(alloc.set_huge_page_sizes(huge) == 0);
  std::vector<std::uint64_t> got;
  for (int i = 0; i < 2000; ++i) {
    engine::AllocRequest req;
    req.length = (static_cast<std::uint64_t>(i % 37) + 1) * kPage;
    req.align = kPage;
    if (i % 3 == 0) req.hint_va = 0x7f0000000000ull + static_cast<std::uint64_t>(i) * 12345 * kPage;
    req.fit = i % 2 ? engine::Fit::kBest : engine::Fit::kFirst;
    std::uint64_t iova = 0;
    CHECK(alloc.alloc(req, &iova) == 0);
    got.push_back(iova);
    if (i % 5 == 4) {
      CHECK(alloc.free(got[got.size() / 2]) == 0);
      got.erase(got.begin() + static_cast<long>(got.size() / 2));
    }
  }
  CHECK(alloc.check_invariants());
  CHECK(alloc.allocated_count() == got.size());
  std::vector<std::uint64_t> lengths(300, 3 * kPage), out(300);
  std::size_t failed = 0;
  CHECK(alloc.bulk_alloc(lengths, kPage, {}, engine::Fit::kBest, out, &failed) == 0);
  CHECK(alloc.bulk_free(out, &failed) == 0);
  CHECK(alloc.reserve(1ull << 39, (1ull << 39) + kPage - 1) == 0);
  CHECK(alloc.check_invariants());
  // Left allocated on purpose: the destructor must free the tree.
}

void test_mapper(sim::SimKernel& k, int fd) {
  const std::uint32_t ioas = ioas_alloc(k, fd);
  Buffer buf(512 * kPage);
  engine::IoasMapper mapper(k, fd, ioas);
  const std::uint32_t rw = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE;

  // Serial, kernel-chosen IOVAs.
  std::vector<std::uint64_t> vas, lens, out(64);
  for (std::size_t i = 0; i < 64; ++i) {
    vas.push_back(buf.va(i * 2 * kPage));
    lens.push_back(kPage);
  }
  CHECK(!mapper.map(vas, lens, {}, out, rw, {}));
  CHECK(mapper.segment_count() == 64);
  std::uint64_t va = 0;
  CHECK(mapper.translate_iova(out[7] + 5, &va) && va == vas[7] + 5);

  // Fixed, coalesced and threaded, in one contiguous run of 256 pages.
  std::vector<std::uint64_t> vas2, lens2, fixed, out2(256);
  for (std::size_t i = 0; i < 256; ++i) {
    vas2.push_back(buf.va(i * kPage));
    lens2.push_back(kPage);
    fixed.push_back((1ull << 32) + i * kPage);
  }
  engine::BatchOptions opts;
  opts.threads = 2;
  CHECK(!mapper.map(vas2, lens2, fixed, out2, rw, opts));
  opts.coalesce = true;
  opts.threads = 1;
  std::vector<std::uint64_t> fixed3, out3(256);
  for (std::size_t i = 0; i < 256; ++i) fixed3.push_back((1ull << 33) + i * kPage);
  CHECK(!mapper.map(vas2, lens2, fixed3, out3, rw, opts));

  // A batch whose last entry collides rolls back all of it.
  std::vector<std::uint64_t> clash = {(1ull << 34), (1ull << 34) + kPage, fixed[0]};
  std::vector<std::uint64_t> cv = {buf.va(0), buf.va(kPage), buf.va(2 * kPage)};
  std::vector<std::uint64_t> cl = {kPage, kPage, kPage}, co(3);
  const std::size_t before = mapper.segment_count();
  engine::BatchError err = mapper.map(cv, cl, clash, co, rw, {});
  CHECK(err && err.errno_value == EEXIST && err.index == 2);
  CHECK(mapper.segment_count() == before);

  // Unmaps: exact segments, then everything.
  std::uint64_t removed = 0;
  CHECK(!mapper.unmap(std::vector<std::uint64_t>(out.begin(), out.begin() + 10),
                      std::vector<std::uint64_t>(10, kPage), nullptr, &removed));
  CHECK(removed == 10 * kPage);
  std::uint64_t unmapped = 0;
  CHECK(mapper.unmap_all(&unmapped) == 0);
  CHECK(unmapped == (54 + 256 + 256) * kPage);
  CHECK(mapper.segment_count() == 0);

  // A pinned mapping: its unmap hands the pin back (a mapper destroyed with it still mapped
  // keeps it on purpose, since a device may still reach the memory).
  std::vector<std::uint64_t> one(1);
  std::vector<engine::Pin> pins{engine::Pin(new int(7), [](void* p) { delete static_cast<int*>(p); })};
  CHECK(!mapper.map(std::vector<std::uint64_t>{buf.va()}, std::vector<std::uint64_t>{kPage}, {},
                    one, rw, {}, pins));
  std::vector<engine::Pin> released;
  CHECK(mapper.unmap_all(&unmapped, &released) == 0);
  CHECK(released.size() == 1 && released[0].use_count() == 1);
  // A mapping without a pin left in place at close: the kernel side must free it.
  CHECK(!mapper.map(std::vector<std::uint64_t>{buf.va()}, std::vector<std::uint64_t>{kPage}, {},
                    one, rw, {}));
}

void test_harvester(sim::SimKernel& k, int fd) {
  const std::uint32_t ioas = ioas_alloc(k, fd);
  iommu_test_cmd md{};
  md.size = sizeof(md);
  md.op = IOMMU_TEST_OP_MOCK_DOMAIN;
  md.id = ioas;
  CHECK(k.ioctl(fd, IOMMU_TEST_CMD, &md) == 0);
  iommu_hwpt_alloc ha{};
  ha.size = sizeof(ha);
  ha.flags = IOMMU_HWPT_ALLOC_DIRTY_TRACKING;
  ha.dev_id = md.u.mock_domain.out_idev_id;
  ha.pt_id = ioas;
  CHECK(k.ioctl(fd, IOMMU_HWPT_ALLOC, &ha) == 0);
  const std::uint32_t hwpt = ha.out_hwpt_id;

  Buffer buf(64 * kPage);
  const std::uint64_t base = MOCK_APERTURE_START;
  iommu_ioas_map m{};
  m.size = sizeof(m);
  m.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE;
  m.ioas_id = ioas;
  m.user_va = buf.va();
  m.length = buf.len;
  m.iova = base;
  CHECK(k.ioctl(fd, IOMMU_IOAS_MAP, &m) == 0);

  iommu_hwpt_set_dirty_tracking on{};
  on.size = sizeof(on);
  on.flags = IOMMU_HWPT_DIRTY_TRACKING_ENABLE;
  on.hwpt_id = hwpt;
  CHECK(k.ioctl(fd, IOMMU_HWPT_SET_DIRTY_TRACKING, &on) == 0);

  // The mock domain's IOPTEs are 2 KiB (MOCK_IO_PAGE_SIZE) and the selftest marks them at
  // that granule: 2 KiB pages 0, 10, 11 and 15 are the 4 KiB pages 0, 5 and 7.
  const std::uint64_t mock_io = kPage / 2;
  std::uint64_t mark2k[2] = {(1ull << 0) | (1ull << 10) | (1ull << 11) | (1ull << 15), 0};
  const std::uint64_t mark = 0b1010'0001ull;
  iommu_test_cmd d{};
  d.size = sizeof(d);
  d.op = IOMMU_TEST_OP_DIRTY;
  d.id = hwpt;
  d.u.dirty.iova = base;
  d.u.dirty.length = buf.len;
  d.u.dirty.page_size = mock_io;
  d.u.dirty.uptr = reinterpret_cast<std::uint64_t>(mark2k);
  CHECK(k.ioctl(fd, IOMMU_TEST_CMD, &d) == 0);

  engine::DirtyHarvester h(k, fd);
  const std::uint32_t hwpts[] = {hwpt};
  const std::uint64_t iovas[] = {base};
  const std::uint64_t lengths[] = {buf.len};
  std::vector<std::uint64_t> bits(engine::bitmap::words_for_length(buf.len, kPage));
  CHECK(!h.harvest(hwpts, iovas, lengths, kPage, bits, false));
  CHECK(d.u.dirty.out_nr_dirty == 4);
  CHECK(bits.size() == 1 && bits[0] == mark);
  if (bits[0] != mark) std::fprintf(stderr, "harvested 0x%llx\n", static_cast<unsigned long long>(bits[0]));
  CHECK(!h.harvest(hwpts, iovas, lengths, kPage, bits, false));
  CHECK(bits[0] == 0);  // cleared by the first harvest
  CHECK(h.harvest(hwpts, iovas, lengths, 0, bits, false).errno_value == EINVAL);
  // Left tracking, mapped and attached: closing the fd tears it all down.
}

void test_vfio_cdev(sim::SimKernel& k, int iommufd) {
  sim::vfio::PciDeviceInfo info;
  CHECK(k.machine().add_pci_device({}, &info) == 0);
  const int dev = k.open(info.cdev.c_str(), 2);
  CHECK(dev >= 0);
  vfio_device_bind_iommufd bind{sizeof(bind), 0, iommufd, 0};
  CHECK(k.ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &bind) == 0);
  const std::uint32_t ioas = ioas_alloc(k, iommufd);
  vfio_device_attach_iommufd_pt at{sizeof(at), 0, ioas};
  CHECK(k.ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at) == 0);
  vfio_region_info ri{};
  ri.argsz = sizeof(ri);
  ri.index = VFIO_PCI_CONFIG_REGION_INDEX;
  CHECK(k.ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ri) == 0);
  std::uint16_t vendor = 0;
  CHECK(k.pread(dev, &vendor, 2, ri.offset) == 2 && vendor == 0x1234);
  CHECK(k.close(dev) == 0);
}

}  // namespace

int main() {
  test_allocator();
  test_user_copy_stops_at_fault();
  {
    sim::SimKernel k;
    const int fd = k.open("/dev/iommu", 2);
    CHECK(fd >= 0);
    test_mapper(k, fd);
    test_harvester(k, fd);
    test_vfio_cdev(k, fd);
    // fd stays open: ~SimKernel closes it, and with it every object above.
  }
  if (g_failures) {
    std::fprintf(stderr, "unit_engine: %d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("unit_engine: all checks passed\n");
  return 0;
}
