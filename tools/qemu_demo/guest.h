/* What the demo's guest programs (guest_dma.c, guest_irq.c) share: edu's register map
 * (QEMU docs/specs/edu.rst), BAR0 accessors, finding the edu in sysfs, and failing loudly.
 * Each program defines GUEST_WHAT ("guest DMA", ...) before including this: a failure prints
 * "GUEST_WHAT FAILED: ..." on the console, where tools/qemu_demo/run.py looks for it, and
 * powers the guest off. */
#ifndef FASTMAP_QEMU_DEMO_GUEST_H
#define FASTMAP_QEMU_DEMO_GUEST_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/reboot.h>
#include <unistd.h>

#define EDU_IDENT 0x00
#define EDU_LIVENESS 0x04
#define EDU_IRQ_STATUS 0x24
#define EDU_IRQ_ACK 0x64
#define EDU_DMA_SRC 0x80
#define EDU_DMA_DST 0x88
#define EDU_DMA_COUNT 0x90
#define EDU_DMA_CMD 0x98
#define EDU_DMA_RUN 0x1u
#define EDU_DMA_TO_RAM 0x2u
#define EDU_DMA_IRQ 0x4u
#define EDU_IRQ_DMA 0x100u
#define EDU_BUF 0x40000u
#define EDU_BUF_SIZE 4096
#define PAGE 4096

__attribute__((format(printf, 1, 2), noreturn)) static inline void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf(GUEST_WHAT " FAILED: ");
  vprintf(fmt, ap);
  printf(" (errno %d: %s)\n", errno, strerror(errno));
  va_end(ap);
  fflush(stdout);
  sync();
  reboot(RB_POWER_OFF);
  _exit(1);
}

static inline unsigned long read_hex(const char *dir, const char *name) {
  char path[512], buf[64] = {0};
  snprintf(path, sizeof path, "%s/%s", dir, name);
  int fd = open(path, O_RDONLY);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  return n > 0 ? strtoul(buf, NULL, 16) : 0;
}

/* The edu's PCI address (its name under /sys/bus/pci/devices), or die. */
static inline const char *find_edu(void) {
  static char bdf[256];
  DIR *d = opendir("/sys/bus/pci/devices");
  if (!d) die("opendir /sys/bus/pci/devices");
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char dir[300];
    snprintf(dir, sizeof dir, "/sys/bus/pci/devices/%s", e->d_name);
    if (read_hex(dir, "vendor") == 0x1234 && read_hex(dir, "device") == 0x11e8) {
      snprintf(bdf, sizeof bdf, "%s", e->d_name);
      closedir(d);
      return bdf;
    }
  }
  errno = 0;
  die("no 1234:11e8 device in /sys/bus/pci/devices");
}

/* BAR0, mapped by the program. */
static volatile uint8_t *bar;
static inline uint32_t rd32(unsigned off) { return *(volatile uint32_t *)(bar + off); }
static inline void wr32(unsigned off, uint32_t v) { *(volatile uint32_t *)(bar + off) = v; }
static inline uint64_t rd64(unsigned off) { return *(volatile uint64_t *)(bar + off); }
static inline void wr64(unsigned off, uint64_t v) { *(volatile uint64_t *)(bar + off) = v; }

#endif
