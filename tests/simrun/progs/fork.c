/* fork: the child shares the parent's open simulated files (one iommufd context, one id
 * space) and has its own fd table; a grandchild reaches the same files. */
#include <fcntl.h>
#include <linux/iommufd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

static unsigned alloc_ioas(int fd) {
  struct iommu_ioas_alloc a = {.size = sizeof a};
  CHECK(ioctl(fd, IOMMU_IOAS_ALLOC, &a) == 0, "IOAS_ALLOC on fd %d", fd);
  return a.out_ioas_id;
}

static void wait_ok(pid_t pid) {
  int status;
  CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child failed (status %#x)", status);
}

int main(void) {
  int fd = open("/dev/iommu", O_RDWR);
  CHECK(fd >= 0, "open");
  CHECK(alloc_ioas(fd) == 1, "first IOAS is 1");
  size_t len = 1 << 16;
  char* buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CHECK(buf != MAP_FAILED, "mmap");

  pid_t pid = fork();
  CHECK(pid >= 0, "fork");
  if (pid == 0) {
    /* Same context: the next id is 2. The map reads the child's own memory. */
    unsigned ioas = alloc_ioas(fd);
    CHECK(ioas == 2, "child's IOAS id %u", ioas);
    struct iommu_ioas_map m = {.size = sizeof m,
                               .flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
                               .ioas_id = ioas, .user_va = (unsigned long)buf, .length = len};
    CHECK(ioctl(fd, IOMMU_IOAS_MAP, &m) == 0, "child map");
    /* A bad pointer in the child is EFAULT, found in the child's memory. */
    EXPECT_ERRNO(ioctl(fd, IOMMU_IOAS_ALLOC, (void*)16), EFAULT);
    /* Its own new files are its own: fd numbers from its table. */
    int mine = open("/dev/iommu", O_RDWR);
    CHECK(mine == fd + 1, "child's new fd %d", mine);
    CHECK(alloc_ioas(mine) == 1, "a new context starts at 1");
    /* A grandchild still reaches the first context. */
    pid_t g = fork();
    CHECK(g >= 0, "fork in the child");
    if (g == 0) {
      CHECK(alloc_ioas(fd) == 3, "grandchild's IOAS is 3");
      CHECK(close(fd) == 0, "grandchild closes its copy");
      _exit(0);
    }
    wait_ok(g);
    CHECK(alloc_ioas(fd) == 4, "the grandchild's close left ours open");
    _exit(0);
  }
  wait_ok(pid);
  /* Everything the child made through the shared fd is in the parent's context. */
  struct iommu_destroy d = {.size = sizeof d, .id = 4};
  CHECK(ioctl(fd, IOMMU_DESTROY, &d) == 0, "destroy the child's IOAS 4");
  struct iommu_ioas_unmap u = {.size = sizeof u, .ioas_id = 2, .iova = 0, .length = ~0ull};
  CHECK(ioctl(fd, IOMMU_IOAS_UNMAP, &u) == 0 && u.length == len, "unmap_all of the child's map");
  /* The child's own fd did not leak into the parent. */
  EXPECT_ERRNO(ioctl(fd + 1, IOMMU_DESTROY, &d), EBADF);
  puts("fork ok");
  return 0;
}
