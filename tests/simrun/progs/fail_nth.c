/* The fail-nth file under sim-run (Documentation/fault-injection/fault-injection.rst):
 * writing N makes the Nth fault-injection site of this thread fail, and the file reads back
 * 0 once it fired. Here the site is IOMMU_IOAS_ALLOC's user copy of its struct. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <linux/iommufd.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "check.h"

static void expect_reads(int fd, const char *want) {
  char buf[32] = {0};
  ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  CHECK(n == (ssize_t)strlen(want) && strcmp(buf, want) == 0, "fail-nth reads '%s'", buf);
}

int main(void) {
  char path[96];
  snprintf(path, sizeof path, "/proc/self/task/%d/fail-nth", gettid());
  int nth = open(path, O_RDWR);
  CHECK(nth >= 0, "open %s", path);
  expect_reads(nth, "0\n");
  EXPECT_ERRNO(pwrite(nth, "x", 1, 0), EINVAL);

  int iommu = open("/dev/iommu", O_RDWR);
  CHECK(iommu >= 0, "open /dev/iommu");
  struct iommu_ioas_alloc cmd = {.size = sizeof cmd};
  CHECK(pwrite(nth, "1", 1, 0) == 1, "arm");
  expect_reads(nth, "1\n");
  EXPECT_ERRNO(ioctl(iommu, IOMMU_IOAS_ALLOC, &cmd), EFAULT);
  expect_reads(nth, "0\n");  /* fired */
  CHECK(ioctl(iommu, IOMMU_IOAS_ALLOC, &cmd) == 0, "disarmed after firing");

  CHECK(pwrite(nth, "100000", 6, 0) == 6, "arm far");
  CHECK(ioctl(iommu, IOMMU_IOAS_ALLOC, &cmd) == 0, "site not reached");
  char buf[32] = {0};
  CHECK(pread(nth, buf, sizeof buf, 0) > 0 && atoi(buf) > 0 && atoi(buf) < 100000,
        "sites were counted: '%s'", buf);
  CHECK(pwrite(nth, "0", 1, 0) == 1, "disarm");
  close(iommu);
  close(nth);

  /* The debugfs knobs the selftests set are there and take writes. */
  DIR *d = opendir("/sys/kernel/debug/");
  CHECK(d != NULL, "opendir debugfs");
  int k = openat(dirfd(d), "failslab/ignore-gfp-wait", O_WRONLY);
  CHECK(k >= 0 && write(k, "N", 1) == 1, "failslab knob");
  close(k);
  closedir(d);
  puts("fail_nth ok");
  return 0;
}
