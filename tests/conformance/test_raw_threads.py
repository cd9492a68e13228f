"""Several threads on one iommufd context at once (the GIL is released in every ioctl)."""

from __future__ import annotations

import ctypes
import errno
import threading
from typing import Any

from .raw import MOCK_PAGE, PAGE, U64_MAX, Iommufd, K, anon

APERTURE_START = K["MOCK_APERTURE_START"]


def run_threads(fns: list) -> list[BaseException]:
    errors: list[BaseException] = []

    def wrap(fn) -> None:  # type: ignore[no-untyped-def]
        try:
            fn()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(fn,)) for fn in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_concurrent_map_unmap_attach_and_harvest(mock_core: Any) -> None:
    f = Iommufd(mock_core)
    ioas = f.ioas()
    _, _, _, idev = f.mock_domain(ioas)
    rc, hwpt = f.hwpt_alloc(idev, ioas, K["IOMMU_HWPT_ALLOC_DIRTY_TRACKING"])
    assert rc == 0
    assert f.set_dirty(hwpt, True) == 0
    buf = anon(64 * PAGE, align=PAGE)
    rounds = 150
    # Automatic IOVAs come from above the fixed mappers' slots.
    auto_base = APERTURE_START + 3 * (1 << 24)
    assert f.allow(ioas, [(auto_base, auto_base + (1 << 24) - 1)]) == 0

    def mapper(slot: int) -> None:
        base = APERTURE_START + slot * (1 << 24)
        for i in range(rounds):
            iova = base + (i % 8) * 16 * PAGE
            rc, _ = f.map(ioas, buf, 8 * PAGE, iova=iova)
            assert rc == 0, rc
            assert f.unmap(ioas, iova, 8 * PAGE) == (0, 8 * PAGE)

    def auto_mapper() -> None:
        for _ in range(rounds):
            rc, iova = f.map(ioas, buf, 4 * PAGE)
            assert rc == 0, rc
            assert auto_base <= iova < auto_base + (1 << 24)
            assert f.unmap(ioas, iova, 4 * PAGE) == (0, 4 * PAGE)

    def attacher() -> None:
        for _ in range(rounds // 3):
            rc, stdev, _pt, _ = f.mock_domain(ioas)
            assert rc == 0, rc
            assert f.destroy(stdev) == 0

    def harvester() -> None:
        bitmap = (ctypes.c_uint64 * 1024)()
        for _ in range(rounds):
            rc = f.get_dirty(hwpt, APERTURE_START, 1 << 26, MOCK_PAGE, ctypes.addressof(bitmap))
            assert rc == 0, rc
            rc, _ranges, _align = f.iova_ranges(ioas)
            assert rc == 0, rc

    errors = run_threads(
        [lambda s=s: mapper(s) for s in range(3)] + [auto_mapper, attacher, harvester]
    )
    assert not errors, errors
    assert f.unmap(ioas, 0, U64_MAX) == (0, 0)
    assert f.destroy(hwpt) == 0


def test_contexts_are_independent_under_threads(core: Any) -> None:
    ctxs = [Iommufd(core) for _ in range(4)]

    def worker(f: Iommufd) -> None:
        ids = [f.ioas() for _ in range(50)]
        assert ids == list(range(1, 51))
        for i in ids:
            assert f.destroy(i) == 0
        assert f.destroy(1) == -errno.ENOENT

    assert not run_threads([lambda f=f: worker(f) for f in ctxs])
