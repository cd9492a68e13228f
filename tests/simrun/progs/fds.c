/* The fd table: simulated fds are real fd numbers that dup, fcntl, poll, fstat and
 * close_range handle like any fd; unmodelled calls fail as the kernel fails them. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/iommufd.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

#include "check.h"

static unsigned alloc_ioas(int fd) {
  struct iommu_ioas_alloc a = {.size = sizeof a};
  CHECK(ioctl(fd, IOMMU_IOAS_ALLOC, &a) == 0, "IOAS_ALLOC on fd %d", fd);
  return a.out_ioas_id;
}

int main(void) {
  int fd = open("/dev/iommu", O_RDWR);
  CHECK(fd >= 3, "open /dev/iommu");
  /* The number is the lowest free one, as the kernel picks it. */
  int probe = open("/dev/null", O_RDONLY);
  CHECK(probe == fd + 1, "next fd is %d, not %d", probe, fd + 1);
  close(probe);

  struct stat st;
  CHECK(fstat(fd, &st) == 0 && S_ISCHR(st.st_mode), "fstat: char device");
  CHECK(major(st.st_rdev) == 10, "misc major, got %u", major(st.st_rdev));
  CHECK(fcntl(fd, F_GETFD) == 0, "no FD_CLOEXEC without O_CLOEXEC");

  unsigned ioas = alloc_ioas(fd);
  int d = dup(fd);
  CHECK(d > fd, "dup");
  CHECK(close(fd) == 0, "close the original");
  /* The open file lives on through the dup: the IOAS is still there. */
  struct iommu_destroy des = {.size = sizeof des, .id = ioas};
  CHECK(ioctl(d, IOMMU_DESTROY, &des) == 0, "destroy through the dup");
  EXPECT_ERRNO(ioctl(fd, IOMMU_DESTROY, &des), EBADF);

  CHECK(dup2(d, 100) == 100, "dup2 to 100");
  alloc_ioas(100);
  int hi = fcntl(d, F_DUPFD_CLOEXEC, 200);
  CHECK(hi >= 200, "F_DUPFD_CLOEXEC");
  CHECK(fcntl(hi, F_GETFD) == FD_CLOEXEC, "F_DUPFD_CLOEXEC sets FD_CLOEXEC");
  CHECK(fcntl(hi, F_SETFD, 0) == 0 && fcntl(hi, F_GETFD) == 0, "F_SETFD clears it");
  alloc_ioas(hi);
  int d3 = dup3(d, 150, O_CLOEXEC);
  CHECK(d3 == 150 && fcntl(150, F_GETFD) == FD_CLOEXEC, "dup3 O_CLOEXEC");

  /* dup2 over a simulated fd closes that file first. */
  int other = open("/dev/iommu", O_RDWR);
  unsigned other_ioas = alloc_ioas(other);
  CHECK(other_ioas == 1, "a second iommufd has its own ids (got %u)", other_ioas);
  int nul = open("/dev/null", O_RDWR);
  CHECK(dup2(nul, other) == other, "dup2 a host fd over a simulated one");
  EXPECT_ERRNO(ioctl(other, IOMMU_IOAS_ALLOC, &(struct iommu_ioas_alloc){.size = 12}), ENOTTY);

  /* A char device without .poll is always ready. */
  struct pollfd p = {.fd = d, .events = POLLIN | POLLOUT};
  CHECK(poll(&p, 1, 0) == 1 && (p.revents & (POLLIN | POLLOUT)) == (POLLIN | POLLOUT),
        "poll: revents %#x", p.revents);

  /* What /dev/iommu does not implement. */
  char buf[16];
  EXPECT_ERRNO(read(d, buf, sizeof buf), EINVAL);
  EXPECT_ERRNO(write(d, buf, sizeof buf), EINVAL);
  EXPECT_ERRNO(pread(d, buf, sizeof buf, 0), EINVAL);
  EXPECT_ERRNO(pwrite(d, buf, sizeof buf, 0), EINVAL);
  struct iovec iov = {buf, sizeof buf};
  EXPECT_ERRNO(readv(d, &iov, 1), EINVAL);
  EXPECT_ERRNO(lseek(d, 0, SEEK_SET), ESPIPE);
  EXPECT_ERRNO(fsync(d), EINVAL);
  EXPECT_ERRNO(ftruncate(d, 0), EINVAL);
  CHECK(mmap(NULL, 4096, PROT_READ, MAP_SHARED, d, 0) == MAP_FAILED && errno == ENODEV,
        "mmap: ENODEV");
  EXPECT_ERRNO(ioctl(d, 0x1234, 0), ENOTTY);
  /* ioctls the VFS itself answers. */
  CHECK(ioctl(d, FIOCLEX) == 0 && fcntl(d, F_GETFD) == FD_CLOEXEC, "FIOCLEX");
  CHECK(ioctl(d, FIONCLEX) == 0 && fcntl(d, F_GETFD) == 0, "FIONCLEX");

  /* Nodes that this machine does not have. */
  EXPECT_ERRNO(open("/dev/vfio/vfio", O_RDWR), ENOENT);
  EXPECT_ERRNO(open("/dev/vfio/devices/vfio0", O_RDWR), ENOENT);

  /* Closing every fd closes the simulated files too. */
  CHECK(close_range(3, ~0u, 0) == 0, "close_range");
  EXPECT_ERRNO(ioctl(d, IOMMU_DESTROY, &des), EBADF);
  EXPECT_ERRNO(fcntl(100, F_GETFD), EBADF);
  int again = open("/dev/iommu", O_RDWR);
  CHECK(again == 3, "the numbers are free again (got %d)", again);
  puts("fds ok");
  return 0;
}
