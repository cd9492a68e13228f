/* fork_pins: a child's files close before its parent's wait returns. The child maps a shared
 * buffer through its own iommufd with a mock domain (pinning the pages) and exits holding
 * it; right after waitpid/wait4/waitid the parent's MD_CHECK_REFS must see no pins, as on
 * the real kernel. Repeated, since the old failure was a race. */
#include <fcntl.h>
#include <linux/iommufd.h>
#include <signal.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

/* The selftest ABI (drivers/iommu/iommufd/iommufd_test.h), only the parts used here. */
#define TEST_CMD _IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 32)
enum { OP_MOCK_DOMAIN = 2, OP_MD_CHECK_REFS = 4 };
struct test_cmd {
  __u32 size, op, id, reserved;
  union {
    struct { __u32 out_stdev_id, out_hwpt_id, out_idev_id; } mock_domain;
    struct { __aligned_u64 length, uptr; __u32 refs; } check_refs;
    __u8 bytes[48];
  } u;
  __u32 last;
};

#define LEN (1ul << 16)

static int check_refs(int fd, void* buf, unsigned refs) {
  struct test_cmd c = {.size = sizeof c, .op = OP_MD_CHECK_REFS};
  c.u.check_refs.length = LEN;
  c.u.check_refs.uptr = (uintptr_t)buf;
  c.u.check_refs.refs = refs;
  return ioctl(fd, TEST_CMD, &c);
}

static void child(char* buf, int ready, int go) {
  int mfd = open("/dev/iommu", O_RDWR);
  CHECK(mfd >= 0, "child open");
  struct iommu_ioas_alloc a = {.size = sizeof a};
  CHECK(ioctl(mfd, IOMMU_IOAS_ALLOC, &a) == 0, "IOAS_ALLOC");
  struct test_cmd md = {.size = sizeof md, .op = OP_MOCK_DOMAIN, .id = a.out_ioas_id};
  CHECK(ioctl(mfd, TEST_CMD, &md) == 0, "MOCK_DOMAIN");
  struct iommu_ioas_map m = {.size = sizeof m,
                             .flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
                             .ioas_id = a.out_ioas_id, .user_va = (uintptr_t)buf,
                             .length = LEN};
  CHECK(ioctl(mfd, IOMMU_IOAS_MAP, &m) == 0, "child map");
  CHECK(check_refs(mfd, buf, 1) == 0, "child sees its pins");
  CHECK(write(ready, "x", 1) == 1, "signal the parent");
  char c;
  CHECK(read(go, &c, 1) == 0, "wait for the parent's check");
  _exit(0); /* exits holding mfd, its domain and its pins */
}

int main(void) {
  int fd = open("/dev/iommu", O_RDWR);
  CHECK(fd >= 0, "open");
  char* buf = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  CHECK(buf != MAP_FAILED, "mmap");
  memset(buf, 1, LEN);
  CHECK(check_refs(fd, buf, 0) == 0, "no pins before");
  for (int i = 0; i < 30; ++i) {
    int p[2], go[2];
    CHECK(pipe(p) == 0 && pipe(go) == 0, "pipe");
    pid_t pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
      close(p[0]);
      close(go[1]);
      child(buf, p[1], go[0]);
    }
    close(p[1]);
    close(go[0]);
    char c;
    CHECK(read(p[0], &c, 1) == 1, "child ready (round %d)", i);
    close(p[0]);
    CHECK(check_refs(fd, buf, 1) == 0, "the child's pins are seen by the parent");
    close(go[1]); /* the child may exit now */
    int status = 0;
    switch (i % 3) { /* each wait call glibc exports that reaps one child */
      case 0:
        CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
        break;
      case 1:
        CHECK(wait4(pid, &status, 0, NULL) == pid, "wait4");
        break;
      default: {
        siginfo_t si = {0};
        CHECK(waitid(P_PID, pid, &si, WEXITED) == 0 && si.si_pid == pid, "waitid");
        status = si.si_status << 8;
        break;
      }
    }
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child failed (status %#x)", status);
    CHECK(check_refs(fd, buf, 0) == 0, "pins released when wait returned (round %d)", i);
  }
  puts("fork_pins ok");
  return 0;
}
