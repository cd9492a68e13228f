/* PID 1 of the demo's interrupt guest (a static binary alone in an initramfs). The guest has a
 * vIOMMU (QEMU's intel-iommu), so its own vfio-pci can take the passed-through edu device
 * (1234:11e8): this program binds edu to vfio-pci, opens it through the guest's VFIO cdev
 * and /dev/iommu, maps a buffer into an IOAS (the guest IOMMU's page tables; QEMU shadows
 * them onto the simulator's IOAS), and has the device DMA with the command's interrupt bit,
 * first on INTx, then on MSI. After each DMA it sleeps in poll(2) on the eventfd the guest
 * kernel signals from its interrupt handler, so the interrupt went simulator eventfd -> QEMU
 * -> guest interrupt controller -> guest vfio-pci -> here. It checks the data, the device's
 * interrupt status, and the guest kernel's own count in /proc/interrupts, then prints
 * "guest interrupts verified" and powers off. Built by tools/qemu_demo/run.py. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/iommufd.h>
#include <linux/vfio.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <unistd.h>

#define GUEST_WHAT "guest interrupts"
#include "guest.h"

#define IOVA 0x200000ull
#define DMAS_PER_MODE 8
/* How long a DMA may take to interrupt: TCG is slow, a lost interrupt never comes. */
#define IRQ_WAIT_MS 10000

static void write_str(const char *path, const char *s) {
  int fd = open(path, O_WRONLY);
  if (fd < 0) die("open %s", path);
  if (write(fd, s, strlen(s)) != (ssize_t)strlen(s)) die("write %s to %s", s, path);
  close(fd);
}

/* driver_override + drivers_probe: the guest's vfio-pci takes the device. */
static void bind_vfio(const char *bdf, char *cdev, size_t len) {
  char path[400];
  snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/driver_override", bdf);
  write_str(path, "vfio-pci");
  write_str("/sys/bus/pci/drivers_probe", bdf);
  snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/vfio-dev", bdf);
  DIR *v = opendir(path);
  if (!v) die("vfio-pci did not bind %s (no %s)", bdf, path);
  for (struct dirent *n; (n = readdir(v));) {
    if (strncmp(n->d_name, "vfio", 4) == 0) {
      snprintf(cdev, len, "/dev/vfio/devices/%s", n->d_name);
      closedir(v);
      return;
    }
  }
  die("no vfioN under %s", path);
}

/* The guest kernel's count of the device's vfio interrupts (its handlers are named
 * vfio-intx(BDF) and vfio-msi[N](BDF)), summed over CPUs. */
static unsigned long kernel_count(const char *name) {
  FILE *f = fopen("/proc/interrupts", "r");
  if (!f) die("open /proc/interrupts");
  char line[1024];
  unsigned long total = 0;
  int found = 0;
  while (fgets(line, sizeof line, f)) {
    if (!strstr(line, name)) continue;
    found = 1;
    char *p = strchr(line, ':');
    if (!p) continue;
    for (++p;;) {
      char *end;
      unsigned long v = strtoul(p, &end, 10);
      if (end == p) break;
      total += v;
      p = end;
    }
  }
  fclose(f);
  if (!found) {
    errno = 0;
    die("no %s line in /proc/interrupts", name);
  }
  return total;
}


static void set_irqs(int dev, uint32_t flags, uint32_t index, uint32_t count, int efd) {
  char buf[sizeof(struct vfio_irq_set) + sizeof(int32_t)];
  struct vfio_irq_set *set = (struct vfio_irq_set *)buf;
  *set = (struct vfio_irq_set){.argsz = sizeof buf, .flags = flags, .index = index,
                               .start = 0, .count = count};
  memcpy(set->data, &efd, sizeof efd);
  if (!(flags & VFIO_IRQ_SET_DATA_EVENTFD)) set->argsz = sizeof *set;
  if (ioctl(dev, VFIO_DEVICE_SET_IRQS, set)) die("VFIO_DEVICE_SET_IRQS index %u", index);
}

/* One DMA with the interrupt bit; waits for the eventfd, then acknowledges at the device. */
static void dma_irq(int efd, uint64_t src, uint64_t dst, uint32_t count, uint32_t dir) {
  wr64(EDU_DMA_SRC, src);
  wr64(EDU_DMA_DST, dst);
  wr64(EDU_DMA_COUNT, count);
  wr64(EDU_DMA_CMD, EDU_DMA_RUN | EDU_DMA_IRQ | dir);
  struct pollfd p = {.fd = efd, .events = POLLIN};
  if (poll(&p, 1, IRQ_WAIT_MS) != 1) {
    errno = ETIMEDOUT;
    die("no interrupt within %d ms of starting a DMA", IRQ_WAIT_MS);
  }
  uint64_t n;
  if (read(efd, &n, sizeof n) != sizeof n) die("read eventfd");
  if (n != 1) {
    errno = 0;
    die("eventfd counted %llu interrupts for one DMA", (unsigned long long)n);
  }
  const uint32_t status = rd32(EDU_IRQ_STATUS);
  if (!(status & EDU_IRQ_DMA)) {
    errno = 0;
    die("interrupt status 0x%x has no DMA completion", status);
  }
  wr32(EDU_IRQ_ACK, status);
}

/* DMAS_PER_MODE DMAs, alternating directions, each interrupting; checks every byte. */
static void run_dmas(int dev, int efd, uint8_t *mem, int intx) {
  for (unsigned r = 0; r < DMAS_PER_MODE / 2; ++r) {
    for (unsigned i = 0; i < PAGE; ++i) mem[i] = (uint8_t)(i * 7 + r * 13 + intx);
    memset(mem + PAGE, 0x5a, PAGE);
    dma_irq(efd, IOVA, EDU_BUF, PAGE, 0);
    /* vfio-pci masks INTx in its handler; the user unmasks once it has serviced the device. */
    if (intx) set_irqs(dev, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK, 0, 1, -1);
    dma_irq(efd, EDU_BUF, IOVA + PAGE, PAGE, EDU_DMA_TO_RAM);
    if (intx) set_irqs(dev, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK, 0, 1, -1);
    if (memcmp(mem, mem + PAGE, PAGE) != 0) {
      errno = 0;
      die("round %u: the device -> RAM copy differs from what RAM -> device sent", r);
    }
  }
}

int main(void) {
  mount("proc", "/proc", "proc", 0, NULL);
  mount("sysfs", "/sys", "sysfs", 0, NULL);
  mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
  setvbuf(stdout, NULL, _IONBF, 0);
  printf("guest: init started (interrupts)\n");

  const char *bdf = find_edu();
  char cdev[300];
  bind_vfio(bdf, cdev, sizeof cdev);
  printf("guest: edu at %s bound to the guest's vfio-pci: %s\n", bdf, cdev);

  int iommufd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
  if (iommufd < 0) die("open /dev/iommu");
  int dev = open(cdev, O_RDWR | O_CLOEXEC);
  if (dev < 0) die("open %s", cdev);
  struct vfio_device_bind_iommufd bind = {.argsz = sizeof bind, .iommufd = iommufd};
  if (ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &bind)) die("VFIO_DEVICE_BIND_IOMMUFD");
  struct iommu_ioas_alloc alloc = {.size = sizeof alloc};
  if (ioctl(iommufd, IOMMU_IOAS_ALLOC, &alloc)) die("IOMMU_IOAS_ALLOC");
  struct vfio_device_attach_iommufd_pt attach = {.argsz = sizeof attach,
                                                 .pt_id = alloc.out_ioas_id};
  if (ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &attach)) die("VFIO_DEVICE_ATTACH_IOMMUFD_PT");
  uint8_t *mem = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) die("mmap buffer");
  struct iommu_ioas_map map = {
      .size = sizeof map,
      .flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
      .ioas_id = alloc.out_ioas_id,
      .user_va = (uintptr_t)mem,
      .length = 2 * PAGE,
      .iova = IOVA,
  };
  if (ioctl(iommufd, IOMMU_IOAS_MAP, &map)) die("IOMMU_IOAS_MAP");

  struct vfio_region_info cfg = {.argsz = sizeof cfg, .index = VFIO_PCI_CONFIG_REGION_INDEX};
  if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &cfg)) die("GET_REGION_INFO config");
  uint16_t cmd;
  if (pread(dev, &cmd, 2, (off_t)cfg.offset + 4) != 2) die("read PCI command");
  cmd |= 0x6;  /* memory space, bus master */
  if (pwrite(dev, &cmd, 2, (off_t)cfg.offset + 4) != 2) die("write PCI command");
  struct vfio_region_info bar0 = {.argsz = sizeof bar0, .index = VFIO_PCI_BAR0_REGION_INDEX};
  if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &bar0)) die("GET_REGION_INFO BAR0");
  bar = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, dev, (off_t)bar0.offset);
  if (bar == MAP_FAILED) die("mmap BAR0");
  if ((rd32(EDU_IDENT) & 0xff) != 0xed) {
    errno = 0;
    die("identification register reads 0x%08x", rd32(EDU_IDENT));
  }
  wr32(EDU_IRQ_ACK, rd32(EDU_IRQ_STATUS));  /* whatever an earlier user left pending */

  int efd = eventfd(0, EFD_CLOEXEC);
  if (efd < 0) die("eventfd");
  char name[300];

  set_irqs(dev, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
           VFIO_PCI_INTX_IRQ_INDEX, 1, efd);
  snprintf(name, sizeof name, "vfio-intx(%s)", bdf);
  const unsigned long intx0 = kernel_count(name);
  run_dmas(dev, efd, mem, 1);
  const unsigned long intx = kernel_count(name) - intx0;
  set_irqs(dev, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
           VFIO_PCI_INTX_IRQ_INDEX, 0, -1);

  set_irqs(dev, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
           VFIO_PCI_MSI_IRQ_INDEX, 1, efd);
  snprintf(name, sizeof name, "vfio-msi[0](%s)", bdf);
  const unsigned long msi0 = kernel_count(name);
  run_dmas(dev, efd, mem, 0);
  const unsigned long msi = kernel_count(name) - msi0;
  set_irqs(dev, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
           VFIO_PCI_MSI_IRQ_INDEX, 0, -1);

  if (intx != DMAS_PER_MODE || msi != DMAS_PER_MODE) {
    errno = 0;
    die("the guest kernel counted %lu INTx and %lu MSI interrupts for %d DMAs each", intx, msi,
        DMAS_PER_MODE);
  }
  printf("guest interrupts verified: %d DMA-complete interrupts (%lu INTx, %lu MSI), each "
         "woke the guest's eventfd once and was counted by the guest kernel; %d pages "
         "checked byte for byte through the guest IOMMU's mapping at IOVA 0x%llx\n",
         2 * DMAS_PER_MODE, intx, msi, DMAS_PER_MODE, IOVA);
  sync();
  reboot(RB_POWER_OFF);
  return 0;
}
