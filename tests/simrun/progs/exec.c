/* exec: simulated fds do not survive exec (sim-run's documented behaviour); the new image
 * starts a simulator of its own. */
#include <fcntl.h>
#include <linux/iommufd.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "check.h"

int main(int argc, char** argv) {
  if (argc == 3) {  /* after exec: argv[2] is the fd the old image had open */
    int old = atoi(argv[2]);
    EXPECT_ERRNO(fcntl(old, F_GETFD), EBADF);
    int fd = open("/dev/iommu", O_RDWR);
    CHECK(fd == old, "the number is free (got %d)", fd);
    struct iommu_ioas_alloc a = {.size = sizeof a};
    CHECK(ioctl(fd, IOMMU_IOAS_ALLOC, &a) == 0 && a.out_ioas_id == 1, "a fresh context");
    puts("exec ok");
    return 0;
  }
  int fd = open("/dev/iommu", O_RDWR); /* no O_CLOEXEC */
  CHECK(fd >= 0, "open");
  struct iommu_ioas_alloc a = {.size = sizeof a};
  CHECK(ioctl(fd, IOMMU_IOAS_ALLOC, &a) == 0, "alloc");
  char num[16];
  snprintf(num, sizeof num, "%d", fd);
  execl("/proc/self/exe", argv[0], "after-exec", num, (char*)NULL);
  CHECK(0, "execl");
}
