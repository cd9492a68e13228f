/* VFIO migration of the simulated edu under sim-run, as a VMM does it with raw syscalls:
 * IOMMUFD with a dirty-tracking HWPT (GET_HW_INFO must offer it), a device DMA seen in the
 * dirty bitmap, STOP_COPY's data fd drained with read(2), then the record written back with
 * write(2) into a RESUMING session, and the device's registers and buffer restored. Then a
 * PRE_COPY session: VFIO_MIG_GET_PRECOPY_INFO, read(2) up to ENOMSG while the device runs,
 * STOP_COPY on the same fd, and that stream restores the state the device stopped in. */
#include <fcntl.h>
#include <linux/iommufd.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "check.h"

#define BAR0 ((uint64_t)VFIO_PCI_BAR0_REGION_INDEX << 40)
#define CFG ((uint64_t)VFIO_PCI_CONFIG_REGION_INDEX << 40)
#define PG 4096ul
#define IOVA (1ul << 24)
#define EDU_BUF 0x40000ul

static int dev;

static void w32(uint64_t off, uint32_t v) { CHECK(pwrite(dev, &v, 4, BAR0 + off) == 4, "w32"); }
static void w64(uint64_t off, uint64_t v) { CHECK(pwrite(dev, &v, 8, BAR0 + off) == 8, "w64"); }
static uint32_t r32(uint64_t off) {
  uint32_t v = 0;
  CHECK(pread(dev, &v, 4, BAR0 + off) == 4, "r32");
  return v;
}
static void dma(uint64_t src, uint64_t dst, uint64_t n, int to_ram) {
  w64(0x80, src);
  w64(0x88, dst);
  w64(0x90, n);
  w64(0x98, 1 | (to_ram ? 2 : 0));
}

/* SET the migration state: the data fd (or -1), or -errno. */
static int set_state(uint32_t state) {
  struct {
    struct vfio_device_feature hdr;
    struct vfio_device_feature_mig_state mig;
  } f = {{sizeof f, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE},
         {state, -7}};
  if (ioctl(dev, VFIO_DEVICE_FEATURE, &f)) return -errno;
  return f.mig.data_fd;
}

int main(void) {
  int iommufd = open("/dev/iommu", O_RDWR);
  CHECK(iommufd >= 0, "open /dev/iommu");
  dev = open("/dev/vfio/devices/vfio0", O_RDWR);
  CHECK(dev >= 0, "open vfio0");
  struct vfio_device_bind_iommufd bind = {.argsz = sizeof bind, .iommufd = iommufd};
  CHECK(ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &bind) == 0, "bind");
  struct iommu_hw_info hw = {.size = sizeof hw, .dev_id = bind.out_devid};
  CHECK(ioctl(iommufd, IOMMU_GET_HW_INFO, &hw) == 0, "GET_HW_INFO");
  CHECK(hw.out_capabilities & IOMMU_HW_CAP_DIRTY_TRACKING, "sim-run's VT-d offers dirty tracking");
  struct iommu_ioas_alloc ioas = {.size = sizeof ioas};
  CHECK(ioctl(iommufd, IOMMU_IOAS_ALLOC, &ioas) == 0, "IOAS_ALLOC");
  struct iommu_hwpt_alloc hwpt = {.size = sizeof hwpt, .flags = IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
                                  .dev_id = bind.out_devid, .pt_id = ioas.out_ioas_id};
  CHECK(ioctl(iommufd, IOMMU_HWPT_ALLOC, &hwpt) == 0, "HWPT_ALLOC dirty");
  struct vfio_device_attach_iommufd_pt at = {.argsz = sizeof at, .pt_id = hwpt.out_hwpt_id};
  CHECK(ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at) == 0, "attach");
  uint8_t* ram = mmap(NULL, 8 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CHECK(ram != MAP_FAILED, "mmap");
  struct iommu_ioas_map map = {.size = sizeof map,
                               .flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE |
                                        IOMMU_IOAS_MAP_WRITEABLE,
                               .ioas_id = ioas.out_ioas_id, .user_va = (uintptr_t)ram,
                               .length = 8 * PG, .iova = IOVA};
  CHECK(ioctl(iommufd, IOMMU_IOAS_MAP, &map) == 0, "map");
  uint16_t cmd = 0;
  CHECK(pread(dev, &cmd, 2, CFG + 4) == 2, "cfg read");
  cmd |= 6; /* memory + bus master */
  CHECK(pwrite(dev, &cmd, 2, CFG + 4) == 2, "cfg write");
  struct iommu_hwpt_set_dirty_tracking sd = {.size = sizeof sd,
                                             .flags = IOMMU_HWPT_DIRTY_TRACKING_ENABLE,
                                             .hwpt_id = hwpt.out_hwpt_id};
  CHECK(ioctl(iommufd, IOMMU_HWPT_SET_DIRTY_TRACKING, &sd) == 0, "dirty on");

  for (unsigned i = 0; i < PG; i++) ram[i] = (uint8_t)(i * 13 + 1);
  w32(0x04, 0x1234);
  dma(IOVA, EDU_BUF, PG, 0); /* guest page 0 -> device buffer */
  dma(EDU_BUF, IOVA + 3 * PG, 64, 1); /* device -> guest page 3: dirty */
  uint64_t bitmap = 0;
  struct iommu_hwpt_get_dirty_bitmap gd = {.size = sizeof gd, .hwpt_id = hwpt.out_hwpt_id,
                                           .iova = IOVA, .length = 8 * PG, .page_size = PG,
                                           .data = (uintptr_t)&bitmap};
  CHECK(ioctl(iommufd, IOMMU_HWPT_GET_DIRTY_BITMAP, &gd) == 0, "dirty bitmap");
  CHECK(bitmap == 1u << 3, "dirty bitmap %#llx", (unsigned long long)bitmap);

  struct {
    struct vfio_device_feature hdr;
    struct vfio_device_feature_mig_data_size sz;
  } ds = {{sizeof ds, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DATA_SIZE}, {0}};
  CHECK(ioctl(dev, VFIO_DEVICE_FEATURE, &ds) == 0, "MIG_DATA_SIZE");
  int save = set_state(VFIO_DEVICE_STATE_STOP_COPY); /* through STOP */
  CHECK(save >= 0, "STOP_COPY: %d", save);
  uint8_t rec[8192];
  size_t len = 0;
  for (;;) {
    ssize_t n = read(save, rec + len, 1000);
    CHECK(n >= 0, "read data fd");
    if (n == 0) break;
    len += (size_t)n;
    CHECK(len < sizeof rec, "record too long");
  }
  CHECK(len == ds.sz.stop_copy_length, "read %zu, size said %llu", len,
        (unsigned long long)ds.sz.stop_copy_length);
  CHECK(set_state(VFIO_DEVICE_STATE_RUNNING_P2P) == -EINVAL, "no P2P states");
  CHECK(set_state(VFIO_DEVICE_STATE_RUNNING) == -1, "back to RUNNING");
  EXPECT_ERRNO(read(save, rec, 1), ENODEV);
  CHECK(close(save) == 0, "close saving fd");

  /* Change the device, then restore the saved record into it. */
  w32(0x04, 0x9999);
  dma(IOVA + 5 * PG, EDU_BUF, PG, 0); /* zeros into the device buffer */
  CHECK(set_state(VFIO_DEVICE_STATE_STOP) == -1, "STOP");
  int resume = set_state(VFIO_DEVICE_STATE_RESUMING);
  CHECK(resume >= 0, "RESUMING: %d", resume);
  for (size_t off = 0; off < len; off += 1000) {
    size_t n = len - off < 1000 ? len - off : 1000;
    CHECK(write(resume, rec + off, n) == (ssize_t)n, "write data fd");
  }
  CHECK(set_state(VFIO_DEVICE_STATE_RUNNING) == -1, "RESUMING -> RUNNING");
  CHECK(close(resume) == 0, "close resuming fd");
  CHECK(r32(0x04) == ~0x1234u, "liveness restored: %#x", r32(0x04));
  dma(EDU_BUF, IOVA + 6 * PG, PG, 1);
  CHECK(memcmp(ram + 6 * PG, ram, PG) == 0, "buffer restored");

  /* PRE_COPY: the record goes while the device runs, then what changed. */
  struct vfio_precopy_info pi = {.argsz = sizeof pi};
  int pre = set_state(VFIO_DEVICE_STATE_PRE_COPY);
  CHECK(pre >= 0, "PRE_COPY: %d", pre);
  CHECK(ioctl(pre, VFIO_MIG_GET_PRECOPY_INFO, &pi) == 0, "PRECOPY_INFO");
  CHECK(pi.initial_bytes == len && pi.dirty_bytes == 0, "initial %llu dirty %llu",
        (unsigned long long)pi.initial_bytes, (unsigned long long)pi.dirty_bytes);
  size_t plen = 0;
  for (;;) {
    ssize_t n = read(pre, rec + plen, 1000);
    if (n < 0) {
      CHECK(errno == ENOMSG, "pre-copy read: %d", errno); /* temporary end of stream */
      break;
    }
    plen += (size_t)n;
  }
  CHECK(plen == len, "initial data %zu", plen);
  w32(0x04, 0x4321); /* the running device changes */
  CHECK(ioctl(pre, VFIO_MIG_GET_PRECOPY_INFO, &pi) == 0 && pi.initial_bytes == 0 &&
            pi.dirty_bytes > 0, "dirty after a change");
  CHECK(set_state(VFIO_DEVICE_STATE_STOP_COPY) == -1, "PRE_COPY -> STOP_COPY: same fd");
  EXPECT_ERRNO(ioctl(pre, VFIO_MIG_GET_PRECOPY_INFO, &pi), EINVAL);
  for (;;) {
    ssize_t n = read(pre, rec + plen, 1000);
    CHECK(n >= 0, "stop-copy read");
    if (n == 0) break;
    plen += (size_t)n;
    CHECK(plen < sizeof rec, "stream too long");
  }
  CHECK(plen > len, "the change follows the record");
  CHECK(close(pre) == 0, "close pre-copy fd");
  w32(0x04, 0x5555);
  resume = set_state(VFIO_DEVICE_STATE_RESUMING);
  CHECK(resume >= 0, "RESUMING: %d", resume);
  CHECK(write(resume, rec, plen) == (ssize_t)plen, "write pre-copy stream");
  CHECK(set_state(VFIO_DEVICE_STATE_RUNNING) == -1, "RESUMING -> RUNNING");
  CHECK(close(resume) == 0, "close resuming fd");
  CHECK(r32(0x04) == ~0x4321u, "state at STOP_COPY restored: %#x", r32(0x04));
  puts("migration ok");
  return 0;
}
