"""The QEMU-shaped VFIO/IOMMUFD lifecycle: backend, address space, containers, devices."""
