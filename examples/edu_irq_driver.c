/* An interrupt-driven edu driver in C, on raw VFIO + IOMMUFD: BAR0 through mmap, DMA
 * completion by an MSI eventfd. The same binary runs on Linux (a VM with QEMU's edu bound
 * to vfio-pci) and, unmodified, on fastmap's simulated kernel:
 *
 *     cc -O2 -o edu_irq_driver examples/edu_irq_driver.c
 *     ./edu_irq_driver                                  # Linux with /dev/iommu
 *     fastmap sim-run --device edu -- ./edu_irq_driver  # the simulator
 *
 * It finds edu (1234:11e8) in sysfs and its VFIO cdev, binds it to an iommufd, attaches it
 * to an IOAS mapping two pages of this process at IOVA 0x200000 (source) and 0x201000
 * (destination), maps BAR0, enables MSI with an eventfd, and copies a page RAM -> edu ->
 * RAM with the command's interrupt bit: after each transfer it sleeps in poll(2) on the
 * eventfd, then reads and acknowledges the interrupt status through the mapping. Prints
 * "ok: ..." and exits 0 when both DMAs interrupted and the destination matches. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/iommufd.h>
#include <linux/vfio.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define DIE(...)                                                         \
  do {                                                                   \
    int e_ = errno;                                                      \
    fprintf(stderr, "edu_irq_driver: " __VA_ARGS__);                     \
    fprintf(stderr, " (errno %d: %s)\n", e_, strerror(e_));              \
    exit(1);                                                             \
  } while (0)

enum {
  REG_IDENT = 0x00, REG_IRQ_STATUS = 0x24, REG_IRQ_ACK = 0x64,
  REG_DMA_SRC = 0x80, REG_DMA_DST = 0x88, REG_DMA_COUNT = 0x90, REG_DMA_CMD = 0x98,
};
#define CMD_RUN 0x1u
#define CMD_TO_RAM 0x2u
#define CMD_IRQ 0x4u
#define IRQ_DMA 0x100u
#define EDU_BUFFER 0x40000u
#define IOVA 0x200000ull

static volatile uint8_t* bar;

static uint32_t rd32(unsigned off) { return *(volatile uint32_t*)(bar + off); }
static void wr32(unsigned off, uint32_t v) { *(volatile uint32_t*)(bar + off) = v; }
static void wr64(unsigned off, uint64_t v) { *(volatile uint64_t*)(bar + off) = v; }

static int read_hex(const char* path, unsigned* out) {
  FILE* f = fopen(path, "r");
  if (!f) return -1;
  int ok = fscanf(f, "%x", out) == 1;
  fclose(f);
  return ok ? 0 : -1;
}

/* /dev/vfio/devices/vfioN of the first edu bound to vfio-pci. */
static void find_edu(char* cdev, size_t len) {
  DIR* d = opendir("/sys/bus/pci/devices");
  if (!d) DIE("opendir /sys/bus/pci/devices");
  for (struct dirent* e; (e = readdir(d));) {
    if (e->d_name[0] == '.') continue;
    char path[512];
    unsigned vendor = 0, device = 0;
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/vendor", e->d_name);
    if (read_hex(path, &vendor)) continue;
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/device", e->d_name);
    if (read_hex(path, &device) || vendor != 0x1234 || device != 0x11e8) continue;
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/vfio-dev", e->d_name);
    DIR* v = opendir(path);
    if (!v) continue;
    for (struct dirent* n; (n = readdir(v));) {
      if (strncmp(n->d_name, "vfio", 4) == 0) {
        snprintf(cdev, len, "/dev/vfio/devices/%s", n->d_name);
        closedir(v);
        closedir(d);
        return;
      }
    }
    closedir(v);
  }
  closedir(d);
  errno = ENODEV;
  DIE("no edu device (1234:11e8) bound to vfio-pci");
}

static void dma(int efd, uint64_t src, uint64_t dst, uint32_t count, uint32_t dir) {
  wr64(REG_DMA_SRC, src);
  wr64(REG_DMA_DST, dst);
  wr64(REG_DMA_COUNT, count);
  wr64(REG_DMA_CMD, CMD_RUN | CMD_IRQ | dir);
  struct pollfd p = {.fd = efd, .events = POLLIN};
  int n = poll(&p, 1, 10000);
  if (n != 1) DIE("no MSI within 10 s of starting the DMA");
  uint64_t count_read;
  if (read(efd, &count_read, sizeof count_read) != sizeof count_read) DIE("read eventfd");
  uint32_t status = rd32(REG_IRQ_STATUS);
  if (!(status & IRQ_DMA)) {
    errno = EIO;
    DIE("interrupt status %#x has no DMA completion", status);
  }
  wr32(REG_IRQ_ACK, status);
}

int main(void) {
  char cdev[300];
  find_edu(cdev, sizeof cdev);
  int iommufd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
  if (iommufd < 0) DIE("open /dev/iommu");
  int dev = open(cdev, O_RDWR | O_CLOEXEC);
  if (dev < 0) DIE("open %s", cdev);
  struct vfio_device_bind_iommufd bind = {.argsz = sizeof bind, .iommufd = iommufd};
  if (ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &bind)) DIE("VFIO_DEVICE_BIND_IOMMUFD");
  struct iommu_ioas_alloc alloc = {.size = sizeof alloc};
  if (ioctl(iommufd, IOMMU_IOAS_ALLOC, &alloc)) DIE("IOMMU_IOAS_ALLOC");
  struct vfio_device_attach_iommufd_pt attach = {.argsz = sizeof attach,
                                                 .pt_id = alloc.out_ioas_id};
  if (ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &attach)) DIE("VFIO_DEVICE_ATTACH_IOMMUFD_PT");

  long page = sysconf(_SC_PAGESIZE);
  uint8_t* mem = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) DIE("mmap buffer");
  struct iommu_ioas_map map = {
      .size = sizeof map,
      .flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
      .ioas_id = alloc.out_ioas_id,
      .user_va = (uintptr_t)mem,
      .length = 2 * page,
      .iova = IOVA,
  };
  if (ioctl(iommufd, IOMMU_IOAS_MAP, &map)) DIE("IOMMU_IOAS_MAP");

  /* Memory decoding and bus mastering on. */
  struct vfio_region_info cfg = {.argsz = sizeof cfg, .index = VFIO_PCI_CONFIG_REGION_INDEX};
  if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &cfg)) DIE("GET_REGION_INFO config");
  uint16_t cmd;
  if (pread(dev, &cmd, 2, cfg.offset + 4) != 2) DIE("read PCI command");
  cmd |= 0x6;
  if (pwrite(dev, &cmd, 2, cfg.offset + 4) != 2) DIE("write PCI command");

  struct vfio_region_info bar0 = {.argsz = sizeof bar0, .index = VFIO_PCI_BAR0_REGION_INDEX};
  if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &bar0)) DIE("GET_REGION_INFO BAR0");
  if (!(bar0.flags & VFIO_REGION_INFO_FLAG_MMAP)) DIE("BAR0 cannot be mmapped");
  bar = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_SHARED, dev, (off_t)bar0.offset);
  if (bar == MAP_FAILED) DIE("mmap BAR0");
  if (rd32(REG_IDENT) != 0x010000ed) {
    errno = ENODEV;
    DIE("identification register reads %#x", rd32(REG_IDENT));
  }

  int efd = eventfd(0, EFD_CLOEXEC);
  if (efd < 0) DIE("eventfd");
  char buf[sizeof(struct vfio_irq_set) + sizeof(int32_t)];
  struct vfio_irq_set* set = (struct vfio_irq_set*)buf;
  *set = (struct vfio_irq_set){.argsz = sizeof buf,
                               .flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                               .index = VFIO_PCI_MSI_IRQ_INDEX,
                               .start = 0,
                               .count = 1};
  memcpy(set->data, &efd, sizeof efd);
  if (ioctl(dev, VFIO_DEVICE_SET_IRQS, set)) DIE("VFIO_DEVICE_SET_IRQS MSI");

  for (long i = 0; i < page; ++i) mem[i] = (uint8_t)(i * 7 + 3);
  memset(mem + page, 0, page);
  dma(efd, IOVA, EDU_BUFFER, (uint32_t)page, 0);
  dma(efd, EDU_BUFFER, IOVA + page, (uint32_t)page, CMD_TO_RAM);
  if (memcmp(mem, mem + page, page) != 0) {
    errno = EIO;
    DIE("the destination differs from the source");
  }
  printf("ok: 2 DMAs of %ld bytes through %s, each completed by an MSI on an eventfd; "
         "BAR0 mapped at %p\n", page, cdev, (void*)bar);
  return 0;
}
