/* Every ioctl `sim-run --trace` decodes, each with recognisable field values, for the test
 * that reads the trace back (test_programs.py). Whether a call succeeds does not matter:
 * its input fields are shown either way. */
#include <fcntl.h>
#include <linux/iommufd.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>

int main(void) {
  int iommufd = open("/dev/iommu", O_RDWR), container = open("/dev/vfio/vfio", O_RDWR);
  int group = open("/dev/vfio/1", O_RDWR), device = open("/dev/vfio/devices/vfio0", O_RDWR);

  struct iommu_ioas_alloc alloc = {.size = sizeof alloc};
  ioctl(iommufd, IOMMU_IOAS_ALLOC, &alloc);
  struct iommu_ioas_iova_ranges ranges = {.size = sizeof ranges, .ioas_id = 71};
  ioctl(iommufd, IOMMU_IOAS_IOVA_RANGES, &ranges);
  struct iommu_ioas_map map = {.size = sizeof map, .flags = IOMMU_IOAS_MAP_FIXED_IOVA,
                               .ioas_id = 72, .user_va = 0x7000, .length = 0x3000,
                               .iova = 0x9000};
  ioctl(iommufd, IOMMU_IOAS_MAP, &map);
  struct iommu_ioas_unmap unmap = {.size = sizeof unmap, .ioas_id = 73, .iova = 0x5000,
                                   .length = 0x3000};
  ioctl(iommufd, IOMMU_IOAS_UNMAP, &unmap);
  struct iommu_destroy destroy = {.size = sizeof destroy, .id = 99};
  ioctl(iommufd, IOMMU_DESTROY, &destroy);
  struct iommu_hw_info hw = {.size = sizeof hw, .dev_id = 74};
  ioctl(iommufd, IOMMU_GET_HW_INFO, &hw);
  struct iommu_hwpt_alloc hwpt = {.size = sizeof hwpt, .flags = 3, .dev_id = 75, .pt_id = 76,
                                  .data_type = 1};
  ioctl(iommufd, IOMMU_HWPT_ALLOC, &hwpt);
  struct iommu_hwpt_set_dirty_tracking tracking = {.size = sizeof tracking, .hwpt_id = 77,
                                                   .flags = 1};
  ioctl(iommufd, IOMMU_HWPT_SET_DIRTY_TRACKING, &tracking);
  uint64_t bitmap[2] = {0};
  struct iommu_hwpt_get_dirty_bitmap dirty = {.size = sizeof dirty, .hwpt_id = 78, .flags = 1,
                                              .iova = 0x1000, .length = 0x10000,
                                              .page_size = 4096,
                                              .data = (uint64_t)(uintptr_t)bitmap};
  ioctl(iommufd, IOMMU_HWPT_GET_DIRTY_BITMAP, &dirty);

  ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU);
  ioctl(group, VFIO_GROUP_SET_CONTAINER, &container);
  ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
  int group_device = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, "0000:00:03.0");
  struct vfio_iommu_type1_dma_map dma_map = {.argsz = sizeof dma_map, .flags = 3,
                                             .vaddr = 0x7000, .iova = 0x9000, .size = 0x2000};
  ioctl(container, VFIO_IOMMU_MAP_DMA, &dma_map);
  struct vfio_iommu_type1_dma_unmap dma_unmap = {.argsz = sizeof dma_unmap, .iova = 0xa000,
                                                 .size = 0x1000};
  ioctl(container, VFIO_IOMMU_UNMAP_DMA, &dma_unmap);
  struct vfio_device_feature feature = {.argsz = sizeof feature, .flags = 0x10000};
  ioctl(container, VFIO_IOMMU_DIRTY_PAGES, &feature);
  ioctl(group_device, VFIO_DEVICE_FEATURE, &feature);
  struct vfio_irq_set irqs = {.argsz = sizeof irqs, .flags = 0x21, .index = 1, .start = 2};
  ioctl(device, VFIO_DEVICE_SET_IRQS, &irqs);
  struct vfio_device_bind_iommufd bind = {.argsz = sizeof bind, .iommufd = iommufd};
  ioctl(device, VFIO_DEVICE_BIND_IOMMUFD, &bind);
  struct vfio_device_attach_iommufd_pt attach = {.argsz = sizeof attach, .pt_id = 79};
  ioctl(device, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &attach);
  struct vfio_region_info region = {.argsz = sizeof region,
                                   .index = VFIO_PCI_BAR0_REGION_INDEX};
  ioctl(group_device, VFIO_DEVICE_GET_REGION_INFO, &region);
  struct vfio_irq_info irq = {.argsz = sizeof irq, .index = VFIO_PCI_MSI_IRQ_INDEX};
  ioctl(group_device, VFIO_DEVICE_GET_IRQ_INFO, &irq);
  ioctl(device, _IO(';', 0x7f), NULL);
  puts("trace_ioctls ok");
  return 0;
}
