"""Huge pages reserved on the host for the suite, as the VM reserves them at boot.

The VM boots with hugepages=256 (tools/selftests/record-real.sh); programs and tests that
map MAP_HUGETLB memory on the host need the same. `reserve` raises the default size's
nr_hugepages so that COUNT pages are free, when it is writable (root, as in CI), and the
caller restores the old value after. When it cannot, `HugePages.why` says why, for a skip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastmap.ram import default_hugepage_size, free_hugepages

COUNT = 256  # as the VM's hugepages=256


@dataclass(frozen=True)
class HugePages:
    """The outcome of `reserve`: free pages of `size` now, and the reason if short."""

    size: int
    free: int
    why: str  # empty when `free >= COUNT`
    restore: int | None  # nr_hugepages to write back at the end, if it was raised

    @property
    def available(self) -> bool:
        return not self.why


def _nr_path(size: int) -> Path:
    return Path(f"/sys/kernel/mm/hugepages/hugepages-{size // 1024}kB/nr_hugepages")


def reserve() -> HugePages:
    """Make COUNT default-size huge pages free if they are not already."""
    size = default_hugepage_size()
    free = free_hugepages(size)
    if free >= COUNT:
        return HugePages(size, free, "", None)
    path = _nr_path(size)
    try:
        old = int(path.read_text())
        path.write_text(str(old + COUNT - free))
    except (OSError, ValueError) as e:
        return HugePages(size, free, f"{COUNT} free {size >> 10} KiB huge pages needed, "
                         f"{free} free, and {path} cannot be raised ({e}); run as root or "
                         f"reserve them (sysctl vm.nr_hugepages)", None)
    free = free_hugepages(size)
    why = "" if free >= COUNT else (f"raised {path} but only {free} of {COUNT} huge pages "
                                    "could be allocated (memory fragmented or short)")
    return HugePages(size, free, why, old)


def release(pages: HugePages) -> None:
    """Write back the nr_hugepages that `reserve` raised."""
    if pages.restore is not None:
        try:
            _nr_path(pages.size).write_text(str(pages.restore))
        except OSError:
            pass
