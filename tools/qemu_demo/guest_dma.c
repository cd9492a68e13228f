/* PID 1 of the demo guest (a static binary alone in an initramfs): finds the passed-through
 * edu device (1234:11e8), turns on memory decoding and bus mastering, maps BAR0 through
 * sysfs resource0, and has the device copy locked buffers to and from its DMA buffer
 * (guest-physical addresses from /proc/self/pagemap; no vIOMMU, so bus address = GPA).
 * Every byte is checked in both directions. Prints "guest DMA verified" and powers off.
 * With fastmap_demo=migrate on the kernel command line it first runs the migration loop below.
 * Built by tools/qemu_demo/run.py with `cc -static`. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <time.h>
#include <unistd.h>

#define GUEST_WHAT "guest DMA"
#include "guest.h"

static int cmdline_has(const char *word) {
  char buf[1024] = {0};
  int fd = open("/proc/cmdline", O_RDONLY);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  return n > 0 && strstr(buf, word) != NULL;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}


static uint64_t phys_of(void *va) {
  int fd = open("/proc/self/pagemap", O_RDONLY);
  if (fd < 0) die("open pagemap");
  uint64_t entry = 0;
  off_t off = (off_t)((uintptr_t)va / PAGE) * 8;
  if (pread(fd, &entry, 8, off) != 8) die("read pagemap");
  close(fd);
  if (!(entry & (1ull << 63))) die("page not present");
  uint64_t pfn = entry & ((1ull << 55) - 1);
  if (pfn == 0) die("pagemap gave no PFN (needs CAP_SYS_ADMIN)");
  return pfn * PAGE + ((uintptr_t)va % PAGE);
}

static unsigned dmas;
static void dma(uint64_t src, uint64_t dst, uint64_t count, uint64_t cmd) {
  wr64(EDU_DMA_SRC, src);
  wr64(EDU_DMA_DST, dst);
  wr64(EDU_DMA_COUNT, count);
  wr64(EDU_DMA_CMD, cmd | EDU_DMA_RUN);
  for (long spins = 0; rd64(EDU_DMA_CMD) & EDU_DMA_RUN; ++spins) {
    if (spins > 100000000L) die("DMA did not complete");
  }
  dmas++;
}

static void *locked_page(void) {
  void *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED,
                 -1, 0);
  if (p == MAP_FAILED) die("mmap buffer");
  memset(p, 0, PAGE);  /* fault it in: pagemap needs it present */
  return p;
}

static void check(const uint8_t *got, const uint8_t *want, size_t n, const char *what) {
  for (size_t i = 0; i < n; ++i) {
    if (got[i] != want[i]) {
      errno = 0;
      die("%s: byte %zu is 0x%02x, expected 0x%02x", what, i, got[i], want[i]);
    }
  }
}

/* RAM -> device -> RAM copies of patterns, checked byte for byte; prints "guest DMA verified". */
static void round_trips(unsigned nrounds) {
  uint8_t *out = locked_page(), *back = locked_page(), *patch = locked_page();
  const uint64_t out_pa = phys_of(out), back_pa = phys_of(back), patch_pa = phys_of(patch);
  printf("guest: buffers at GPA 0x%llx 0x%llx 0x%llx\n", (unsigned long long)out_pa,
         (unsigned long long)back_pa, (unsigned long long)patch_pa);

  const double t0 = now();
  const unsigned dmas0 = dmas;
  unsigned rounds = 0;
  uint64_t to_dev = 0, to_ram = 0;
  for (unsigned r = 0; r < nrounds; ++r, ++rounds) {
    /* RAM -> device: a whole buffer of a pattern that differs per round. */
    for (unsigned i = 0; i < EDU_BUF_SIZE; ++i) out[i] = (uint8_t)(i * 7 + r * 13 + (i >> 8));
    dma(out_pa, EDU_BUF, EDU_BUF_SIZE, 0);
    to_dev += EDU_BUF_SIZE;
    /* RAM -> device again into the middle of the device buffer only. */
    const unsigned at = 64 + r * 96, len = 256 + r * 32;
    for (unsigned i = 0; i < len; ++i) patch[i] = (uint8_t)(0xa5 ^ (i + r));
    dma(patch_pa, EDU_BUF + at, len, 0);
    to_dev += len;
    /* device -> RAM: all of it, into a buffer that held something else. */
    memset(back, 0x5a, PAGE);
    dma(EDU_BUF, back_pa, EDU_BUF_SIZE, EDU_DMA_TO_RAM);
    to_ram += EDU_BUF_SIZE;
    uint8_t want[EDU_BUF_SIZE];
    memcpy(want, out, EDU_BUF_SIZE);
    memcpy(want + at, patch, len);
    check(back, want, EDU_BUF_SIZE, "device -> RAM copy");
    /* device -> RAM into part of a buffer: the bytes around it stay as they were. */
    memset(back, 0x3c, PAGE);
    dma(EDU_BUF + at, back_pa + 100, len, EDU_DMA_TO_RAM);
    to_ram += len;
    uint8_t want2[PAGE];
    memset(want2, 0x3c, PAGE);
    memcpy(want2 + 100, patch, len);
    check(back, want2, PAGE, "partial device -> RAM copy");
  }
  const double dt = now() - t0;
  printf("guest DMA verified: %u rounds, %u DMAs, %llu bytes RAM->device, %llu bytes "
         "device->RAM, checked byte for byte, %.1f ms (%.0f us per DMA incl. MMIO exits)\n",
         rounds, dmas - dmas0, (unsigned long long)to_dev, (unsigned long long)to_ram, dt * 1e3,
         dt * 1e6 / (dmas - dmas0));
}

/* Migration mode (kernel command line fastmap_demo=migrate): the device writes the pages of a
 * guest buffer in turn, each time with a pattern naming the iteration, until a line "c"
 * arrives on the console. Only the device writes those pages, so after a live migration
 * their contents on the destination came from QEMU's dirty-page accounting of device DMA
 * (IOMMU dirty tracking) and the device's own migrated state. Every page is checked before
 * the device rewrites it and all of them at the end, then the device buffer (it must hold the
 * last iteration's pattern) and fresh round trips. */
#define MIG_PAGES 64

static void fill_page(uint32_t *w, uint32_t iter, uint32_t page) {
  w[0] = iter;
  w[1] = page;
  for (unsigned i = 2; i < PAGE / 4; ++i) w[i] = iter * 0x9e3779b1u ^ (i * 0x85ebca6bu) ^ page;
}

static void verify_page(const uint8_t *got, uint32_t iter, uint32_t page, const char *when) {
  static uint32_t want[PAGE / 4];
  fill_page(want, iter, page);
  if (memcmp(got, want, PAGE) != 0) {
    const uint32_t *w = (const uint32_t *)got;
    errno = 0;
    die("page %u %s: holds iteration %u (page tag %u), expected iteration %u", page, when, w[0],
        w[1], iter);
  }
}

static int console_says_check(void) {
  struct pollfd pfd = {.fd = 0, .events = POLLIN};
  if (poll(&pfd, 1, 0) <= 0) return 0;
  char buf[64];
  const ssize_t n = read(0, buf, sizeof buf);
  return n > 0 && memchr(buf, 'c', (size_t)n) != NULL;
}

static void migrate_loop(void) {
  uint8_t *src = locked_page();
  const uint64_t src_pa = phys_of(src);
  uint8_t *pages = mmap(NULL, MIG_PAGES * PAGE, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED, -1, 0);
  if (pages == MAP_FAILED) die("mmap pages");
  memset(pages, 0, MIG_PAGES * PAGE);
  static uint64_t pa[MIG_PAGES];
  static uint32_t last[MIG_PAGES];
  /* The iteration count, in its own page, so the host can read it from a paused QEMU. */
  volatile uint32_t *count = locked_page();
  unsigned frames = 0;
  for (unsigned p = 0; p < MIG_PAGES; ++p) {
    pa[p] = phys_of(pages + p * PAGE);
    unsigned q = 0;
    while (q < p && pa[q] >> 21 != pa[p] >> 21) ++q;
    frames += q == p;
  }
  /* The host parses this line: the count's address and how many 2 MiB frames the device
   * writes (the IOMMU tracks dirtiness per IOPTE, up to 2 MiB with superpages). */
  printf("guest: migration loop: the device writes %d pages of guest RAM in turn until a line "
         "\"c\" arrives; count at GPA 0x%llx, pages in %u 2MiB frames\n", MIG_PAGES,
         (unsigned long long)phys_of((void *)count), frames);
  uint32_t iter = 0;
  unsigned checked = 0;
  const double t0 = now();
  for (;;) {
    if ((iter & 15) == 0 && console_says_check()) break;
    ++iter;
    const uint32_t p = iter % MIG_PAGES;
    if (last[p]) {
      verify_page(pages + p * PAGE, last[p], p, "before the device rewrites it");
      ++checked;
    }
    fill_page((uint32_t *)src, iter, p);
    dma(src_pa, EDU_BUF, PAGE, 0);
    dma(EDU_BUF, pa[p], PAGE, EDU_DMA_TO_RAM);
    last[p] = iter;
    *count = iter;
  }
  const double dt = now() - t0;
  for (unsigned p = 0; p < MIG_PAGES; ++p) {
    if (last[p]) verify_page(pages + p * PAGE, last[p], p, "at the end");
  }
  /* The device's buffer is device state: it holds the last pattern copied into it. */
  memset(src, 0, PAGE);
  dma(EDU_BUF, src_pa, PAGE, EDU_DMA_TO_RAM);
  verify_page(src, iter, iter % MIG_PAGES, "copied back from the device buffer");
  printf("guest migration verified: %u page writes by device DMA (%u per page slot, %d slots) "
         "in %.1f s, %u pages checked before being rewritten, all %d at the end; the device "
         "buffer held iteration %u\n", iter, iter / MIG_PAGES, MIG_PAGES, dt, checked,
         MIG_PAGES, iter);
  round_trips(4);  /* the device still works on the destination */
}

int main(void) {
  mount("proc", "/proc", "proc", 0, NULL);
  mount("sysfs", "/sys", "sysfs", 0, NULL);
  setvbuf(stdout, NULL, _IONBF, 0);
  printf("guest: init started\n");

  const char *bdf = find_edu();
  char dir[300];
  snprintf(dir, sizeof dir, "/sys/bus/pci/devices/%s", bdf);
  printf("guest: edu at %s, class 0x%06lx\n", bdf, read_hex(dir, "class"));

  /* Memory space and bus master on (no driver binds it, so nobody else does). */
  char path[400];
  snprintf(path, sizeof path, "%s/config", dir);
  int cfg = open(path, O_RDWR);
  if (cfg < 0) die("open config");
  uint16_t cmd = 0;
  if (pread(cfg, &cmd, 2, 4) != 2) die("read command register");
  cmd |= 0x6;
  if (pwrite(cfg, &cmd, 2, 4) != 2) die("write command register");
  close(cfg);

  snprintf(path, sizeof path, "%s/resource0", dir);
  int res = open(path, O_RDWR | O_SYNC);
  if (res < 0) die("open resource0");
  bar = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, res, 0);
  if (bar == MAP_FAILED) die("mmap resource0");

  const uint32_t ident = rd32(EDU_IDENT);
  if ((ident & 0xff) != 0xed) {
    errno = 0;
    die("identification register reads 0x%08x", ident);
  }
  wr32(EDU_LIVENESS, 0x12345678);
  if (rd32(EDU_LIVENESS) != (uint32_t)~0x12345678u) {
    errno = 0;
    die("liveness register does not invert");
  }
  printf("guest: BAR0 ident 0x%08x, liveness ok\n", ident);

  if (cmdline_has("fastmap_demo=migrate")) {
    migrate_loop();
  } else {
    round_trips(16);
  }
  fflush(stdout);
  sync();
  reboot(RB_POWER_OFF);
  return 0;
}
