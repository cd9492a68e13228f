/* A plain C iommufd client: open /dev/iommu, allocate an IOAS, map a buffer, attach a mock
 * domain (CONFIG_IOMMUFD_TEST) and check the mapping through it, then unmap. It runs
 * unmodified on a real kernel and on fastmap's simulated one:
 *
 *   cc -I"$(tools/kernel-headers.sh)" -o iommufd_map examples/iommufd_map.c
 *   fastmap sim-run -- ./iommufd_map        # the simulated Linux 6.12
 *   ./iommufd_map                           # a real kernel with /dev/iommu
 *
 * Exit status 0 when every check passed; the first failure is printed. */
#include <errno.h>
#include <fcntl.h>
#include <linux/iommufd.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

/* The selftest's private uAPI (drivers/iommu/iommufd/iommufd_test.h), as much as we use. */
#define IOMMU_TEST_CMD _IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 32)
enum { IOMMU_TEST_OP_MOCK_DOMAIN = 2, IOMMU_TEST_OP_MD_CHECK_MAP = 3 };
#define MOCK_APERTURE_START (1ull << 24)
#define MOCK_APERTURE_LAST ((1ull << 31) - 1)
struct iommu_test_cmd {
  uint32_t size, op, id, reserved;
  union {
    struct { uint32_t out_stdev_id, out_hwpt_id, out_idev_id; } mock_domain;
    struct { uint64_t iova, length, uptr; } check_map;
    uint8_t pad[48];
  };
  uint32_t last;
};

#define CHECK(cond, what)                                                          \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      fprintf(stderr, "FAIL: %s (errno %d: %s)\n", what, errno, strerror(errno)); \
      return 1;                                                                    \
    }                                                                              \
  } while (0)

int main(void) {
  const size_t len = 1 << 20;
  int fd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
  CHECK(fd >= 0, "open /dev/iommu");

  struct iommu_ioas_alloc alloc = {.size = sizeof alloc};
  CHECK(ioctl(fd, IOMMU_IOAS_ALLOC, &alloc) == 0, "IOMMU_IOAS_ALLOC");

  struct iommu_test_cmd md = {.size = sizeof md, .op = IOMMU_TEST_OP_MOCK_DOMAIN,
                              .id = alloc.out_ioas_id};
  CHECK(ioctl(fd, IOMMU_TEST_CMD, &md) == 0, "IOMMU_TEST_OP_MOCK_DOMAIN");

  unsigned char* buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CHECK(buf != MAP_FAILED, "mmap");
  memset(buf, 0x5a, len);
  struct iommu_ioas_map map = {.size = sizeof map,
                               .flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
                               .ioas_id = alloc.out_ioas_id,
                               .user_va = (uintptr_t)buf,
                               .length = len};
  CHECK(ioctl(fd, IOMMU_IOAS_MAP, &map) == 0, "IOMMU_IOAS_MAP");
  /* The mock domain's aperture bounds where the kernel may place the mapping. */
  CHECK(map.iova >= MOCK_APERTURE_START && map.iova + len - 1 <= MOCK_APERTURE_LAST,
        "IOVA inside the mock aperture");

  /* The mock domain translates every page of the range to our buffer's pages. */
  struct iommu_test_cmd check = {.size = sizeof check, .op = IOMMU_TEST_OP_MD_CHECK_MAP,
                                 .id = md.mock_domain.out_hwpt_id,
                                 .check_map = {map.iova, len, (uintptr_t)buf}};
  CHECK(ioctl(fd, IOMMU_TEST_CMD, &check) == 0, "IOMMU_TEST_OP_MD_CHECK_MAP");

  struct iommu_ioas_unmap unmap = {.size = sizeof unmap, .ioas_id = alloc.out_ioas_id,
                                   .iova = map.iova, .length = len};
  CHECK(ioctl(fd, IOMMU_IOAS_UNMAP, &unmap) == 0 && unmap.length == len, "IOMMU_IOAS_UNMAP");
  CHECK(ioctl(fd, IOMMU_IOAS_UNMAP, &unmap) != 0 && errno == ENOENT, "second unmap: ENOENT");

  CHECK(close(fd) == 0, "close");
  printf("ok: ioas %u, mock hwpt %u, 1 MiB mapped at iova 0x%llx and checked\n",
         alloc.out_ioas_id, md.mock_domain.out_hwpt_id, (unsigned long long)map.iova);
  return 0;
}
