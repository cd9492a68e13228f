/* A VFIO user's discovery, on a machine with one edu device at 0000:00:03.0: sysfs
 * attributes and links, the group and cdev nodes, the cdev's rdev matching sysfs. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/iommufd.h>
#include <linux/vfio.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "check.h"

#define DEV "/sys/bus/pci/devices/0000:00:03.0"

static void read_attr(const char* path, char* out, size_t size) {
  int fd = open(path, O_RDONLY);
  CHECK(fd >= 0, "open %s", path);
  ssize_t n = read(fd, out, size - 1);
  CHECK(n > 0, "read %s", path);
  out[n] = '\0';
  close(fd);
}

int main(void) {
  char buf[PATH_MAX];
  read_attr(DEV "/vendor", buf, sizeof buf);
  CHECK(strcmp(buf, "0x1234\n") == 0, "vendor '%s'", buf);
  FILE* f = fopen(DEV "/device", "r");
  CHECK(f && fgets(buf, sizeof buf, f) && strcmp(buf, "0x11e8\n") == 0, "device via stdio");
  fclose(f);
  EXPECT_ERRNO(open(DEV "/vendor", O_WRONLY), EACCES);
  EXPECT_ERRNO(open(DEV "/no-such-attribute", O_RDONLY), ENOENT);

  ssize_t n = readlink(DEV "/iommu_group", buf, sizeof buf - 1);
  CHECK(n > 0, "readlink iommu_group");
  buf[n] = '\0';
  CHECK(strcmp(buf, "../../../kernel/iommu_groups/0") == 0, "iommu_group -> %s", buf);
  char* real = realpath(DEV "/iommu_group", NULL);
  CHECK(real && strcmp(real, "/sys/kernel/iommu_groups/0") == 0, "realpath %s", real);
  free(real);
  EXPECT_ERRNO(readlink(DEV "/vendor", buf, sizeof buf), EINVAL);

  struct stat st;
  CHECK(lstat(DEV, &st) == 0 && S_ISLNK(st.st_mode), "the device entry is a link");
  CHECK(stat(DEV, &st) == 0 && S_ISDIR(st.st_mode), "to a directory");

  DIR* dir = opendir("/sys/kernel/iommu_groups/0/devices");
  CHECK(dir, "opendir");
  int found = 0;
  for (struct dirent* e; (e = readdir(dir));) found += strcmp(e->d_name, "0000:00:03.0") == 0;
  closedir(dir);
  CHECK(found == 1, "the group lists the device");
  dir = opendir("/dev/vfio/devices");
  CHECK(dir, "opendir /dev/vfio/devices");
  found = 0;
  for (struct dirent* e; (e = readdir(dir));) found += strcmp(e->d_name, "vfio0") == 0;
  closedir(dir);
  CHECK(found == 1, "/dev/vfio/devices lists vfio0");

  /* QEMU's check: the cdev's rdev is what sysfs says vfio-dev/vfio0/dev is. */
  read_attr(DEV "/vfio-dev/vfio0/dev", buf, sizeof buf);
  unsigned maj, min;
  CHECK(sscanf(buf, "%u:%u", &maj, &min) == 2, "dev '%s'", buf);
  CHECK(stat("/dev/vfio/devices/vfio0", &st) == 0 && S_ISCHR(st.st_mode), "stat the cdev");
  CHECK(major(st.st_rdev) == maj && minor(st.st_rdev) == min, "stat rdev");
  int dev = open("/dev/vfio/devices/vfio0", O_RDWR | O_CLOEXEC);
  CHECK(dev >= 0, "open the cdev");
  CHECK(fstat(dev, &st) == 0 && major(st.st_rdev) == maj && minor(st.st_rdev) == min,
        "fstat rdev");

  /* Unbound, the cdev answers only BIND; then it is a device of the iommufd. */
  struct vfio_device_info info = {.argsz = sizeof info};
  EXPECT_ERRNO(ioctl(dev, VFIO_DEVICE_GET_INFO, &info), EINVAL);
  int iommufd = open("/dev/iommu", O_RDWR);
  struct vfio_device_bind_iommufd bind = {.argsz = sizeof bind, .iommufd = iommufd};
  CHECK(ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &bind) == 0, "BIND_IOMMUFD");
  CHECK(ioctl(dev, VFIO_DEVICE_GET_INFO, &info) == 0 && (info.flags & VFIO_DEVICE_FLAGS_PCI),
        "GET_INFO");
  /* Config space through pread: the vendor id again. */
  unsigned short vendor = 0;
  CHECK(pread(dev, &vendor, 2, (off_t)VFIO_PCI_CONFIG_REGION_INDEX << 40) == 2 &&
            vendor == 0x1234, "config vendor %#x", vendor);
  CHECK(close(dev) == 0 && close(iommufd) == 0, "close");
  puts("sysfs ok");
  return 0;
}
