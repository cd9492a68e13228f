/* libfastmap_sim used directly (no interposer, no Python): build a simulated kernel, plug
 * an edu device, and run the example's sequence, printing what the kernel answered. */
#include <fastmap_sim.h>
#include <fcntl.h>
#include <linux/iommufd.h>
#include <stdint.h>
#include <sys/mman.h>

#include "check.h"

#define IOMMU_TEST_CMD _IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 32)
struct iommu_test_cmd {
  uint32_t size, op, id, reserved;
  union {
    struct { uint32_t out_stdev_id, out_hwpt_id, out_idev_id; } mock_domain;
    uint8_t pad[48];
  };
  uint32_t last;
};

int main(void) {
  struct fastmap_sim_config cfg;
  fastmap_sim_config_init(&cfg);
  cfg.kernel_version = 612;
  fastmap_sim* sim = NULL;
  CHECK(fastmap_sim_create(&cfg, &sim) == 0, "create");
  struct fastmap_sim_pci_spec spec;
  fastmap_sim_pci_spec_init(&spec);
  struct fastmap_sim_pci_info info;
  CHECK(fastmap_sim_add_pci_device(sim, &spec, &info) == 0, "add edu");
  CHECK(strcmp(info.bdf, "0000:00:03.0") == 0 && strcmp(info.cdev, "/dev/vfio/devices/vfio0") == 0,
        "device %s %s", info.bdf, info.cdev);
  spec.iommu = "nonsense";
  CHECK(fastmap_sim_add_pci_device(sim, &spec, NULL) == -EINVAL, "bad iommu: -EINVAL");

  int ro = fastmap_sim_open(sim, "/dev/iommu", O_RDONLY);  /* root opens any access mode */
  CHECK(ro >= 0, "O_RDONLY open");
  CHECK(fastmap_sim_close(sim, ro) == 0, "O_RDONLY close");
  CHECK(fastmap_sim_open(sim, "/dev/nothing", O_RDWR) == -ENOENT, "no such node");
  int fd = fastmap_sim_open(sim, "/dev/iommu", O_RDWR);
  CHECK(fd == 3, "fd %d", fd);
  struct iommu_ioas_alloc a = {.size = sizeof a};
  CHECK(fastmap_sim_ioctl(sim, fd, IOMMU_IOAS_ALLOC, &a) == 0, "alloc");
  struct iommu_test_cmd md = {.size = sizeof md, .op = 2, .id = a.out_ioas_id};
  CHECK(fastmap_sim_ioctl(sim, fd, IOMMU_TEST_CMD, &md) == 0, "mock domain");
  size_t len = 1 << 20;
  void* buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  struct iommu_ioas_map m = {.size = sizeof m,
                             .flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
                             .ioas_id = a.out_ioas_id, .user_va = (uintptr_t)buf, .length = len};
  CHECK(fastmap_sim_ioctl(sim, fd, IOMMU_IOAS_MAP, &m) == 0, "map");
  long bad = fastmap_sim_ioctl(sim, fd, IOMMU_IOAS_MAP, (void*)8);
  char b[4];
  CHECK(fastmap_sim_read(sim, fd, b, 4) == -EINVAL, "read");
  void* out;
  CHECK(fastmap_sim_mmap(sim, fd, NULL, 4096, PROT_READ, MAP_SHARED, 0, &out) == -ENODEV, "mmap");
  unsigned maj, min;
  CHECK(fastmap_sim_chardev(sim, fd, &maj, &min) == 1 && maj == 10, "chardev");
  char attr[32] = {0};
  CHECK(fastmap_sim_sysfs_read(sim, "/sys/bus/pci/devices/0000:00:03.0/vendor", attr, 31) == 7 &&
            strcmp(attr, "0x1234\n") == 0, "sysfs vendor");
  printf("ioas=%u hwpt=%u iova=0x%llx bad=%ld\n", a.out_ioas_id, md.mock_domain.out_hwpt_id,
         (unsigned long long)m.iova, bad);
  CHECK(fastmap_sim_close(sim, fd) == 0 && fastmap_sim_close(sim, fd) == -EBADF, "close");
  fastmap_sim_destroy(sim);
  return 0;
}
