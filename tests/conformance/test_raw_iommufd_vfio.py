"""The iommufd side seen through VFIO cdev devices behind the emulated VT-d: auto domains,
reserved regions, replace, dirty bits from real device DMA (doc §2.4, §2.7, §2.8, §4.3)."""

from __future__ import annotations

import ctypes
import errno
import os

from .raw import (
    EDU_DMA_BUF,
    PAGE,
    U64_MAX,
    Buf,
    Dev,
    Iommufd,
    K,
    attach,
    bind,
    detach,
    make,
    sim_kernel,
)

MSI = (0xFEE00000, 0xFEEFFFFF)
VTD_LAST = (1 << 48) - 1
DIRTY = K["IOMMU_HWPT_ALLOC_DIRTY_TRACKING"]


class Rig:
    def __init__(self, devices: int = 1, dirty: bool = False) -> None:
        self.k = sim_kernel()
        self.infos = [self.k.machine.add_pci_device(dirty=dirty) for _ in range(devices)]
        self.f = Iommufd(self.k)
        self.ioas = self.f.ioas()
        self.devs = [Dev(self.k, self.k.open(i["cdev"], os.O_RDWR)) for i in self.infos]
        self.ids = []
        for d in self.devs:
            rc, devid = bind(d, self.f.fd)
            assert rc == 0
            d.enable()
            self.ids.append(devid)


def test_auto_domain_shared_and_reservations() -> None:
    r = Rig(devices=2)
    f, ioas = r.f, r.ioas
    assert f.iova_ranges(ioas) == (0, [(0, U64_MAX)], 1)
    rc, pt = attach(r.devs[0], ioas)
    assert rc == 0 and pt not in (ioas, *r.ids)
    # The VT-d aperture and the MSI window are reserved; alignment is the 4 KiB IOPTE.
    assert f.iova_ranges(ioas) == (0, [(0, MSI[0] - 1), (MSI[1] + 1, VTD_LAST)], PAGE)
    assert attach(r.devs[1], ioas) == (0, pt)  # a compatible auto HWPT is reused
    assert f.destroy(pt) == -errno.EBUSY
    assert detach(r.devs[0]) == 0
    assert detach(r.devs[0]) == 0  # detaching twice is a no-op
    assert f.destroy(pt) == -errno.EBUSY  # still used by the second device
    assert detach(r.devs[1]) == 0
    assert f.destroy(pt) == -errno.ENOENT  # gone with its last device
    assert f.iova_ranges(ioas) == (0, [(0, U64_MAX)], 1)


def test_reserved_region_conflicts() -> None:
    r = Rig()
    f, ioas = r.f, r.ioas
    assert f.map(ioas, 1 << 31, PAGE, iova=MSI[0])[0] == 0
    assert attach(r.devs[0], ioas)[0] == -errno.EADDRINUSE
    assert f.unmap(ioas, 0, U64_MAX)[0] == 0
    assert f.allow(ioas, [(MSI[0] - PAGE, MSI[0] + PAGE)]) == 0
    assert attach(r.devs[0], ioas)[0] == -errno.EADDRINUSE
    assert f.allow(ioas, []) == 0
    rc, _pt = attach(r.devs[0], ioas)
    assert rc == 0
    assert f.map(ioas, 1 << 31, PAGE, iova=MSI[0])[0] == -errno.EINVAL  # reserved now


def test_device_dma_through_the_ioas() -> None:
    r = Rig()
    f, ioas, dev = r.f, r.ioas, r.devs[0]
    buf = Buf(2 * PAGE, align=PAGE)
    buf.write(bytes(range(256)) * 16)
    assert attach(dev, ioas)[0] == 0
    rc, iova = f.map(ioas, buf.addr, 2 * PAGE)
    assert rc == 0
    assert dev.dma(iova, EDU_DMA_BUF, PAGE, to_ram=False) & 1 == 0
    assert r.k.machine.edu_buffer(r.infos[0]["bdf"]) == bytes(range(256)) * 16
    dev.dma(EDU_DMA_BUF, iova + PAGE, PAGE, to_ram=True)
    assert buf.read(PAGE, PAGE) == bytes(range(256)) * 16
    # Unmapped: the device's DMA faults instead of touching memory.
    assert f.unmap(ioas, iova, 2 * PAGE) == (0, 2 * PAGE)
    buf.write(bytes(PAGE), PAGE)
    dev.dma(EDU_DMA_BUF, iova + PAGE, PAGE, to_ram=True)
    assert buf.read(PAGE, PAGE) == bytes(PAGE)
    assert r.k.machine.dma_faults(r.infos[0]["bdf"])


def test_replace_moves_the_device() -> None:
    r = Rig(dirty=True)
    f, ioas, dev, devid = r.f, r.ioas, r.devs[0], r.ids[0]
    rc, auto_pt = attach(dev, ioas)
    assert rc == 0
    rc, user_pt = f.hwpt_alloc(devid, ioas, DIRTY)
    assert rc == 0
    assert attach(dev, user_pt) == (0, user_pt)  # replace
    assert f.destroy(auto_pt) == -errno.ENOENT
    other = f.ioas()
    rc, pt2 = attach(dev, other)  # replace onto another IOAS: reservations move
    assert rc == 0
    assert f.iova_ranges(ioas)[1] == [(0, VTD_LAST)]  # only the user HWPT's aperture left
    assert f.iova_ranges(other)[1] == [(0, MSI[0] - 1), (MSI[1] + 1, VTD_LAST)]
    assert f.destroy(user_pt) == 0
    assert dev.close() == 0  # close unbinds and detaches
    assert f.destroy(pt2) == -errno.ENOENT
    assert f.destroy(r.ids[0]) == -errno.ENOENT
    assert f.destroy(other) == 0


def test_dirty_pages_from_device_dma() -> None:
    r = Rig(dirty=True)
    f, ioas, dev, devid = r.f, r.ioas, r.devs[0], r.ids[0]
    rc, hwpt = f.hwpt_alloc(devid, ioas, DIRTY)
    assert rc == 0
    assert attach(dev, hwpt) == (0, hwpt)
    assert f.option(K["IOMMU_OPTION_HUGE_PAGES"], K["IOMMU_OPTION_OP_SET"], ioas, 0)[0] == 0
    buf = Buf(64 * PAGE, align=1 << 21)
    iova = 1 << 24  # the edu DMA engine only drives 28 address bits
    assert f.map(ioas, buf.addr, 64 * PAGE, iova=iova)[0] == 0
    assert f.set_dirty(hwpt, True) == 0
    dev.dma(EDU_DMA_BUF, iova + 5 * PAGE + 100, 200, to_ram=True)
    dev.dma(EDU_DMA_BUF, iova + 9 * PAGE - 8, 16, to_ram=True)  # straddles two pages
    dev.dma(iova + 20 * PAGE, EDU_DMA_BUF, 64, to_ram=False)  # reads do not dirty
    bitmap = (ctypes.c_uint64 * 1)()
    assert f.get_dirty(hwpt, iova, 64 * PAGE, PAGE, ctypes.addressof(bitmap)) == 0
    assert bitmap[0] == (1 << 5) | (1 << 8) | (1 << 9)
    bitmap[0] = 0
    assert f.get_dirty(hwpt, iova, 64 * PAGE, PAGE, ctypes.addressof(bitmap)) == 0
    assert bitmap[0] == 0
    # A device without dirty tracking cannot get a dirty HWPT.
    k2 = sim_kernel()
    info = k2.machine.add_pci_device(dirty=False)
    g = Iommufd(k2)
    d2 = Dev(k2, k2.open(info["cdev"], os.O_RDWR))
    rc, id2 = bind(d2, g.fd)
    assert rc == 0
    assert g.hwpt_alloc(id2, g.ioas(), DIRTY)[0] == -errno.EOPNOTSUPP


def test_hw_info_vtd() -> None:
    for dirty in (False, True):
        r = Rig(dirty=dirty)
        data = (ctypes.c_uint8 * 24)()
        s = make("iommu_hw_info", dev_id=r.ids[0], data_len=24, data_uptr=ctypes.addressof(data))
        assert r.f.ioctl("IOMMU_GET_HW_INFO", s) == 0
        assert s.out_data_type == K["IOMMU_HW_INFO_TYPE_INTEL_VTD"]
        assert s.data_len == 24
        assert s.out_capabilities == (K["IOMMU_HW_CAP_DIRTY_TRACKING"] if dirty else 0)
