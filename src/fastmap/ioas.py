"""I/O address spaces: map memory for devices, one entry or a whole batch at a time.

    with IOMMUFDBackend() as be, be.ioas() as ioas:
        iova = ioas.map(buf)                        # any contiguous Python buffer, or a VA
        iovas = ioas.map_batch(vas, lengths)        # numpy arrays: one crossing into C++
        ioas.unmap(iova, len(buf))

Every map, copy and unmap goes through the C++ batch engine (`_core.IoasMapper`), in one
crossing per call. The engine owns all of this IOAS's state: the table of what it mapped
(so batches are all or nothing and unmaps can be undone if a later one fails), the one
VA <-> IOVA translation index, the optional IOVA allocator of iovas="dense", and the pins.
Its locking contract is in csrc/engine/map_engine.h and docs/thread-safety.md.

Lifetime: a mapped Python buffer is pinned (its buffer export is held) by the mapping itself,
in C++, until the unmap that removes the mapping from the kernel: it cannot be resized or
freed while a device can reach it, whatever happens in Python (garbage collection of this
object without `close()`, a KeyboardInterrupt mid-call, an unmap of the source of a
`copy_from`). A copy keeps the source's pins. Raw integer VAs are the caller's to keep
alive. `close()` (or leaving the `with` block) unmaps everything, releasing the pins, then
destroys the IOAS. An Ioas collected without `close()` leaves its mappings in the kernel and
keeps their memory referenced for the life of the process.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import stat
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from fastmap import _checks, _core, uapi
from fastmap._checks import U64_MAX, u64_array
from fastmap._closing import Closing
from fastmap.allocator import AllocationError, InvalidRequestError, IovaRange
from fastmap.dma_memory import DmaMemory, MemoryLease, leases_for, owner_of
from fastmap.errors import BatchError, KernelError
from fastmap.kernel import Fd
from fastmap.prot import Prot
from fastmap.prot import check as check_prot

if TYPE_CHECKING:
    from fastmap.kernel import Kernel

Buffer: TypeAlias = Any  # anything exporting a contiguous PEP 3118 buffer
U64Array: TypeAlias = npt.NDArray[np.uint64]

_PAGE = os.sysconf("SC_PAGE_SIZE")

_HINT_COALESCED = (
    "the range covers part of a coalesced mapping: unmap the whole run (see segments()) "
    "or map without coalesce=True"
)


class Ioas(Closing):
    """One IOAS of an iommufd. Allocate with `Ioas.allocate` or `IOMMUFDBackend.ioas()`."""

    def __init__(
        self, kernel: Kernel, iommufd: Fd | int, ioas_id: int, *, owned: bool = True
    ) -> None:
        """`iommufd`: preferably the Fd (then this Ioas stops reaching the kernel once it is
        closed, whatever later reuses its number); a bare number is trusted to stay open."""
        self._kernel = kernel
        self._iommufd = iommufd
        self._id = _checks.integer("ioas_id", ioas_id, "u32")
        self._owned = owned
        self._core_mapper = _core.IoasMapper(kernel.core, int(iommufd), ioas_id)
        self._closed = False
        # Rounded mappings of buffers: (iova, length) as returned/given -> the pages mapped.
        self._rounded: dict[tuple[int, int], tuple[int, int]] = {}

    @classmethod
    def allocate(cls, kernel: Kernel, iommufd: Fd | int) -> Ioas:
        """IOMMU_IOAS_ALLOC on `iommufd`."""
        cmd = uapi.new(uapi.iommu_ioas_alloc)
        kernel.ioctl(int(iommufd), uapi.IOMMU_IOAS_ALLOC, cmd)
        return cls(kernel, iommufd, int(cmd.out_ioas_id))

    @property
    def _fd(self) -> int:
        """The iommufd's number, checked open on every use (ValueError once closed)."""
        return self._iommufd.number if isinstance(self._iommufd, Fd) else self._iommufd

    @property
    def _mapper(self) -> _core.IoasMapper:
        # The C++ mapper holds the number: let it act only while the fd is the one we had.
        _ = self._fd
        return self._core_mapper

    def _fd_gone(self) -> bool:
        return isinstance(self._iommufd, Fd) and self._iommufd.closed

    @property
    def id(self) -> int:
        """The IOAS object id in its iommufd."""
        return self._id

    @property
    def kernel(self) -> Kernel:
        return self._kernel

    @property
    def iommufd(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._closed

    # --- single mappings ---------------------------------------------------------------
    def map(
        self,
        buffer_or_va: Buffer | DmaMemory | int,
        length: int | None = None,
        iova: int | None = None,
        *,
        prot: Prot = Prot.RW,
        keep: object = None,
    ) -> int:
        """Map a buffer, a DmaMemory, or `length` bytes at a raw VA; return the IOVA of the
        first byte.

        A Python buffer (numpy array, bytearray, memoryview...) may start anywhere in a page
        (numpy's data usually starts 16 bytes in), while with a device attached the kernel maps
        whole pages only. So a buffer's mapping is rounded out to the host pages it touches:
        the pages' IOVA is page-aligned, and the IOVA returned is that plus the buffer's offset
        in its first page (`unmap(iova, nbytes)` unmaps those same pages). The device can
        reach the rest of those pages too. A fixed `iova` is where the buffer's first byte
        goes: it must have the buffer's offset within a page. Raw VAs are mapped exactly as
        given. A buffer stays pinned until unmapped; `length` may shorten a buffer's mapping
        (from its start). Memory of a DmaMemory (or RamBlock) is leased by the mapping, so it
        cannot be closed while mapped. `keep` (raw VAs only): an object the mapping holds
        until it is unmapped, e.g. the owner of the memory (a RamBlock's lease).
        """
        prot = check_prot(prot)
        if iova is not None:
            iova = _checks.integer("iova", iova)
        if isinstance(buffer_or_va, DmaMemory):
            if length is not None:
                length = _checks.integer("length", length)
            buffer_or_va = buffer_or_va.array[:length]
        pin, va, length = self._resolve(buffer_or_va, length, bool(prot & Prot.WRITE))
        held: object = pin
        if keep is not None:
            if pin is not None:
                pin.release()
                raise ValueError("keep= is for raw VAs: a mapped buffer is pinned already")
            held = keep
        else:
            owner = owner_of(va, length)
            if owner is not None:
                held = _Held(pin, owner.lease())
        offset = 0
        user_length = length
        if pin is not None:  # a buffer: map the whole pages it touches
            offset = va % _PAGE
            va -= offset
            length = _round_up(offset + length, _PAGE)
            if iova is not None:
                if iova % _PAGE != offset:
                    _release_all([held])
                    raise ValueError(
                        f"iova={iova:#x} is where the buffer's first byte goes, so it must "
                        f"be {offset:#x} into a page as the buffer is (the mapping covers "
                        "whole pages)"
                    )
                iova -= offset
        # The mapping takes the pin inside the engine call: no Python step between the kernel
        # map and its recording, so nothing (a signal included) can separate them.
        chosen, err = self._mapper.map_one(va, length, iova, prot, held)
        if err is not None:
            _release_all([held])
            entry: dict[str, object] = {"va": va, "length": length}
            if iova is not None:
                entry["iova"] = iova
            hint = self._map_hint(err[0], err[2], va, length, iova)
            raise BatchError(err[0], err[2], 0, entry, hint, err[3])
        if offset or length != user_length:
            self._rounded[(chosen + offset, user_length)] = (chosen, length)
        return chosen + offset

    def unmap(self, iova: int, length: int) -> int:
        """Unmap every mapping inside [iova, iova+length); each must lie wholly inside.
        Returns the bytes unmapped. A buffer's (iova, nbytes), as `map` returned it, unmaps
        the whole pages that mapping covers (and their byte count is returned).

        Raises BatchError (ENOENT) when nothing is mapped there or a mapping sticks out.
        """
        return self.unmap_batch([iova], [length])

    def unmap_all(self) -> int:
        """Unmap everything in the IOAS (IOMMU_IOAS_UNMAP of [0, 2^64)); returns bytes."""
        rc, ret = self._mapper.unmap_all()
        if rc >= 0:
            self._rounded.clear()
        if rc < 0:
            raise KernelError.from_errno(
                -rc, "IOMMU_IOAS_UNMAP", {"ioas_id": self._id, "all": True}
            )
        return ret

    # --- batches ---------------------------------------------------------------------------
    def map_batch(
        self,
        vas: npt.ArrayLike,
        lengths: npt.ArrayLike,
        iovas: npt.ArrayLike | Literal["kernel", "dense", "identity"] | None = None,
        *,
        prot: Prot = Prot.RW,
        coalesce: bool = False,
        threads: int = 1,
        keep: Sequence[object] | None = None,
    ) -> U64Array:
        """Map entry i = `lengths[i]` bytes at raw VA `vas[i]`.

        Where each entry goes: `iovas` as an array of fixed IOVAs; None or "kernel": the
        kernel chooses; "identity": IOVA = VA; "dense": fastmap's IOVA allocator packs them
        into the IOAS's usable ranges, first fit, keeping each VA's offset within 2 MiB and
        1 GiB pages so large IOPTEs stay possible (see `allocator`).

        All or nothing: if entry k fails, entries 0..k-1 are unmapped again and BatchError
        names entry k. `coalesce` merges neighbours contiguous in VA and IOVA into one kernel
        area (fewer ioctls; such a run can only be unmapped whole). `threads` > 1 submits
        fixed-IOVA batches in parallel, with exactly the serial result. Returns the IOVAs.
        The caller keeps the memory at `vas` alive while mapped, or passes `keep`: one object
        per entry (e.g. a RamBlock lease, or None) that its mapping holds until unmapped.
        Without `keep`, an entry inside a DmaMemory (or RamBlock) holds a lease of it, so
        that memory cannot be closed while mapped.
        """
        threads = _checks.integer("threads", threads, "u32")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        v, ln = u64_array("vas", vas), u64_array("lengths", lengths)
        if v.shape != ln.shape:
            raise ValueError(f"vas and lengths differ in length: {v.size} != {ln.size}")
        prot = check_prot(prot)
        held = leases_for(v, ln) if keep is None else list(keep)
        if held is not None and len(held) != v.size:
            raise ValueError(f"keep and vas differ in length: {len(held)} != {v.size}")
        if isinstance(iovas, str):
            if iovas == "kernel":
                return self._run_map(v, ln, None, prot, coalesce, threads, keep=held)
            if iovas == "identity":
                return self._run_map(v, ln, v, prot, coalesce, threads, keep=held)
            if iovas == "dense":
                return self._map_dense(v, ln, prot, coalesce, threads, held)
            raise ValueError(f"iovas={iovas!r}: use an array, 'kernel', 'identity' or 'dense'")
        fixed = None
        if iovas is not None:
            fixed = u64_array("iovas", iovas)
            if fixed.shape != v.shape:
                raise ValueError(f"iovas and vas differ in length: {fixed.size} != {v.size}")
        return self._run_map(v, ln, fixed, prot, coalesce, threads, keep=held)

    def _map_dense(
        self,
        vas: U64Array,
        lengths: U64Array,
        prot: int,
        coalesce: bool,
        threads: int,
        keep: list[object] | None,
    ) -> U64Array:
        """iovas="dense": IOVAs are whole pages (at least the IOAS's alignment), so an entry
        with a sub-page VA or length is rounded out to its pages as `map` does for buffers,
        and its IOVA carries the VA's offset in its page."""
        self._enable_allocator()
        align = max(self.iova_alignment, _PAGE)
        offsets = vas % np.uint64(_PAGE)
        rounded = bool(offsets.any()) or bool((lengths % np.uint64(_PAGE)).any())
        if rounded:
            page_vas = vas - offsets
            page_lengths = (offsets + lengths + np.uint64(_PAGE - 1)) & ~np.uint64(_PAGE - 1)
        else:
            page_vas, page_lengths = vas, lengths
        out = self._run_map(
            page_vas,
            page_lengths,
            None,
            prot,
            coalesce,
            threads,
            dense=True,
            align=align,
            keep=keep,
        )
        if not rounded:
            return out
        user = out + offsets
        for i in np.flatnonzero((offsets != 0) | (page_lengths != lengths)):
            self._rounded[(int(user[i]), int(lengths[i]))] = (int(out[i]), int(page_lengths[i]))
        return user

    def _map_hint(self, err: int, call: str, va: int, length: int, iova: int | None) -> str | None:
        """A hint from what this IOAS knows (its alignment, the reserved ranges such as the
        MSI window), else None for the generic one."""
        if err not in (_errno.EINVAL, _errno.EADDRINUSE) or not call.startswith("IOMMU_IOAS"):
            return None
        try:
            ranges, align = self._iova_ranges()
        except (KernelError, ValueError):
            return None
        if align > 1:
            bad = [
                f"{n}={v:#x}"
                for n, v in (("va", va), ("length", length), ("iova", iova))
                if v is not None and v % align
            ]
            if bad:
                return (
                    f"{', '.join(bad)} not a multiple of this IOAS's IOVA alignment "
                    f"{align:#x} (a device domain is attached): map whole pages, e.g. "
                    "fastmap.DmaMemory or a buffer passed to Ioas.map, which rounds to pages"
                )
        if iova is not None:
            last = iova + length - 1
            if not any(r.start <= iova and last <= r.last for r in ranges):
                holes = _reserved_holes(ranges)
                hit = [h for h in holes if h.start <= last and iova <= h.last]
                shown = ", ".join(f"[{h.start:#x}, {h.last:#x}]" for h in hit) or "none"
                msi = (
                    " (the MSI window)" if any(h.start <= 0xFEE00000 <= h.last for h in hit) else ""
                )
                return (
                    f"[{iova:#x}, {last:#x}] is not inside the usable IOVA ranges "
                    f"(Ioas.iova_ranges()); it meets reserved {shown}{msi}"
                )
        return None

    def _enable_allocator(self) -> None:
        """Give the engine its IOVA allocator (once): the IOAS's usable ranges
        (IOMMU_IOAS_IOVA_RANGES) less the first and last page (as the kernel's own choice
        never returns IOVA 0), with everything mapped so far taken. From then on the engine
        records every map and frees every unmap in it, under its own lock."""
        if self._mapper.has_allocator:
            return
        lo, hi = _PAGE, U64_MAX - _PAGE
        usable = [
            (max(r.start, lo), min(r.last, hi))
            for r in self.iova_ranges()
            if max(r.start, lo) <= min(r.last, hi)
        ]
        rc = self._mapper.enable_allocator(usable)
        if rc < 0:
            raise KernelError.from_errno(-rc, "allocator", {"ioas_id": self._id})

    def allocations(self) -> list[IovaRange]:
        """The ranges the engine's IOVA allocator holds (empty before the first
        iovas="dense" map): everything mapped through this Ioas, clipped to the usable
        ranges."""
        return [IovaRange(s, last) for s, last in self._mapper.allocations()]

    def unmap_batch(self, iovas: npt.ArrayLike, lengths: npt.ArrayLike) -> int:
        """Unmap entry i = [iovas[i], iovas[i]+lengths[i]); all or nothing. Returns the
        bytes unmapped."""
        io, ln = u64_array("iovas", iovas), u64_array("lengths", lengths)
        if io.shape != ln.shape:
            raise ValueError(f"iovas and lengths differ in length: {io.size} != {ln.size}")
        keys: list[tuple[int, int]] = []
        sub_page = (io | ln) % np.uint64(_PAGE) != 0
        if sub_page.any():  # entries naming a rounded buffer mapping unmap its pages
            io, ln = io.copy(), ln.copy()
            for i in np.flatnonzero(sub_page):
                key = (int(io[i]), int(ln[i]))
                pages = self._rounded.get(key) or self._rounded_segment(*key)
                if pages is not None:
                    io[i], ln[i] = pages
                    keys.append(key)
        removed, err = self._mapper.unmap(io, ln)
        if err is None:
            for key in keys:
                self._rounded.pop(key, None)
        if err is not None:
            errno_value, index, call, rollback_failed = err
            hint = _HINT_COALESCED if call == "coalesced" else None
            raise BatchError(
                errno_value,
                "IOMMU_IOAS_UNMAP" if call == "coalesced" else call,
                index,
                {"iova": int(io[index]), "length": int(ln[index])},
                hint,
                rollback_failed,
            )
        return int(removed)

    def _rounded_segment(self, iova: int, length: int) -> tuple[int, int] | None:
        """The pages of a rounded mapping the table missed (its map was interrupted after
        the engine recorded it): a segment that is exactly [iova, iova + length) rounded
        out to pages."""
        start = iova - iova % _PAGE
        pages = (start, _round_up(iova + length, _PAGE) - start)
        if any((seg.iova, seg.length) == pages for seg in self._mapper.segments()):
            return pages
        return None

    def _run_map(
        self,
        vas: U64Array,
        lengths: U64Array,
        iovas: U64Array | None,
        prot: int,
        coalesce: bool,
        threads: int,
        *,
        dense: bool = False,
        align: int = 1,
        keep: list[object] | None = None,
    ) -> U64Array:
        # One crossing: the engine maps, records, pins and (dense) allocates together.
        out, err = self._mapper.map(
            vas, lengths, iovas, prot, coalesce, threads, dense, align, keep
        )
        if err is not None:
            _release_all(keep or [])
            errno_value, index, call, rollback_failed = err
            if call == "allocator":
                raise _allocator_error(errno_value, index, int(lengths[index]), align)
            entry: dict[str, object] = {"va": int(vas[index]), "length": int(lengths[index])}
            if iovas is not None:
                entry["iova"] = int(iovas[index])
            hint = self._map_hint(
                errno_value,
                call,
                int(vas[index]),
                int(lengths[index]),
                None if iovas is None else int(iovas[index]),
            )
            raise BatchError(errno_value, call, index, entry, hint, rollback_failed)
        return out

    # --- other IOAS operations ---------------------------------------------------------------
    def iova_ranges(self) -> list[IovaRange]:
        """IOMMU_IOAS_IOVA_RANGES: the usable IOVA ranges (the holes of the reserved ranges)."""
        return self._iova_ranges()[0]

    @property
    def iova_alignment(self) -> int:
        """The IOVA/length granularity every map must respect (1 with no domain)."""
        return self._iova_ranges()[1]

    def _iova_ranges(self) -> tuple[list[IovaRange], int]:
        # The two-call protocol: ask with room for n, the kernel says how many there are.
        n = 4
        while True:
            arr = (uapi.iommu_iova_range * n)()
            cmd = uapi.new(
                uapi.iommu_ioas_iova_ranges,
                ioas_id=self._id,
                num_iovas=n,
                allowed_iovas=ctypes.addressof(arr),
            )
            try:
                self._kernel.ioctl(self._fd, uapi.IOMMU_IOAS_IOVA_RANGES, cmd)
            except KernelError as e:
                if e.errno == _errno.EMSGSIZE and cmd.num_iovas > n:
                    n = int(cmd.num_iovas)
                    continue
                raise
            ranges = [IovaRange(int(arr[i].start), int(arr[i].last)) for i in range(cmd.num_iovas)]
            return ranges, int(cmd.out_iova_alignment)

    def allow_iovas(self, ranges: Iterable[tuple[int, int] | IovaRange]) -> None:
        """IOMMU_IOAS_ALLOW_IOVAS: restrict automatic IOVA choice to these (start, last)
        ranges; an empty list lifts the restriction."""
        items = [(r.start, r.last) if isinstance(r, IovaRange) else r for r in ranges]
        arr = (uapi.iommu_iova_range * max(1, len(items)))()
        for i, (start, last) in enumerate(items):
            arr[i].start, arr[i].last = start, last
        cmd = uapi.new(
            uapi.iommu_ioas_allow_iovas,
            ioas_id=self._id,
            num_iovas=len(items),
            allowed_iovas=ctypes.addressof(arr),
        )
        self._kernel.ioctl(self._fd, uapi.IOMMU_IOAS_ALLOW_IOVAS, cmd)

    def copy_from(
        self,
        src: Ioas,
        src_iova: int,
        length: int,
        dst_iova: int | None = None,
        *,
        prot: Prot = Prot.RW,
    ) -> int:
        """IOMMU_IOAS_COPY: map here the pages `src` maps at [src_iova, +length), sharing
        the pinned pages. Returns the IOVA here."""
        if src.iommufd != self._fd:
            raise ValueError("copy_from needs both IOASes on the same iommufd")
        src_iova, length = _checks.integer("src_iova", src_iova), _checks.integer("length", length)
        if dst_iova is not None:
            dst_iova = _checks.integer("dst_iova", dst_iova)
        prot = check_prot(prot)
        # The engine copies and records in one step; the new area holds the source's pins.
        err, iova = self._mapper.copy_from(src._mapper, src_iova, length, dst_iova, prot)
        if err:
            raise KernelError.from_errno(
                err,
                "IOMMU_IOAS_COPY",
                {
                    "dst_ioas_id": self._id,
                    "src_ioas_id": src.id,
                    "src_iova": src_iova,
                    "length": length,
                    "dst_iova": dst_iova,
                },
            )
        return int(iova)

    def map_file(
        self,
        fd: int,
        offset: int,
        length: int,
        iova: int | None = None,
        *,
        prot: Prot = Prot.RW,
    ) -> int:
        """IOMMU_IOAS_MAP_FILE (Linux 6.13+): map `length` bytes of a memfd at `offset`.

        `fd` is always a real file descriptor of this process (os.memfd_create), on the
        simulated kernel too: the file's pages are real memory, which the simulator pins
        like Linux. Only iommufd and VFIO fds (the ones `Kernel.open` returns) live in the
        kernel's own fd namespace. So `fd` must be an open regular file here (a memfd is
        one): anything else, such as a simulated fd number, is a ValueError."""
        fd = _checks.fd_number("fd", fd)
        offset, length = _checks.integer("offset", offset), _checks.integer("length", length)
        if iova is not None:
            iova = _checks.integer("iova", iova)
        try:
            st = os.fstat(fd)
        except OSError as e:
            raise ValueError(
                f"fd={fd} is not an open file of this process: map_file takes a real memfd "
                "(os.memfd_create), not a kernel-namespace fd"
            ) from e
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"fd={fd} is not a memfd or regular file (mode {st.st_mode:#o})")
        err, chosen = self._mapper.map_file(fd, offset, length, iova, check_prot(prot))
        if err:
            raise KernelError.from_errno(
                err,
                "IOMMU_IOAS_MAP_FILE",
                {"ioas_id": self._id, "fd": fd, "start": offset, "length": length, "iova": iova},
            )
        return int(chosen)

    @property
    def huge_pages(self) -> bool:
        """IOMMU_OPTION_HUGE_PAGES: whether large IOPTEs may be used (default True)."""
        return bool(self._option(uapi.IOMMU_OPTION_OP_GET, 0))

    @huge_pages.setter
    def huge_pages(self, enabled: bool) -> None:
        try:
            self._option(uapi.IOMMU_OPTION_OP_SET, int(enabled))
        except KernelError as e:
            if e.errno != _errno.EINVAL or not len(self._mapper):
                raise
            raise KernelError.from_errno(
                e.errno,
                e.call,
                e.arguments,
                f"huge_pages cannot change while this IOAS has mappings ({len(self._mapper)}) "
                "and a device domain attached: unmap everything (unmap_all) first, or set it "
                "before mapping",
            ) from None

    def _option(self, op: int, val: int) -> int:
        cmd = uapi.new(
            uapi.iommu_option,
            option_id=uapi.IOMMU_OPTION_HUGE_PAGES,
            op=op,
            object_id=self._id,
            val64=val,
        )
        self._kernel.ioctl(self._fd, uapi.IOMMU_OPTION, cmd)
        return int(cmd.val64)

    # --- translation --------------------------------------------------------------------------
    def translate_iova(self, iova: int) -> int | None:
        """The VA behind `iova` (None where nothing mapped through fastmap covers it)."""
        return self._mapper.translate_iova(_checks.integer("iova", iova))

    def translate_va(self, va: int) -> int | None:
        """An IOVA at which `va` is mapped (the lowest), or None. O(log n), like vtophys."""
        return self._mapper.translate_va(_checks.integer("va", va))

    def translate_va_bulk(self, vas: npt.ArrayLike) -> tuple[U64Array, npt.NDArray[np.bool_]]:
        """translate_va of every entry in one call: (iovas, found); iovas[i] is 0 where
        found[i] is False."""
        return self._mapper.translate_va_bulk(u64_array("vas", vas))

    def translate_iova_bulk(self, iovas: npt.ArrayLike) -> tuple[U64Array, npt.NDArray[np.bool_]]:
        """translate_iova of every entry in one call: (vas, found)."""
        return self._mapper.translate_iova_bulk(u64_array("iovas", iovas))

    def _c_mapper(self) -> object:
        """A PyCapsule of this IOAS's mapper for the C API (fastmap_capi.h in
        fastmap.get_include(); cimport fastmap.capi). Valid while this Ioas lives."""
        return self._mapper.capsule()

    # --- introspection -----------------------------------------------------------------------
    def segments(self) -> list[_core.Segment]:
        """What this IOAS has mapped through fastmap, by IOVA: snapshots that hold no pin
        (the mapping holds it, and only the unmap that removes the mapping releases it)."""
        return self._mapper.segments()

    def __len__(self) -> int:
        return len(self._mapper)

    def pinned(self, iova: int) -> bool:
        """Whether the mapping at `iova` holds a pin (a Python buffer, or a copy's source)."""
        return any(s.iova == iova and s.pinned for s in self._mapper.segments())

    @property
    def pin_count(self) -> int:
        """How many mappings hold a pin."""
        return self._mapper.pin_count

    # --- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Unmap everything (releasing the pins), then destroy the IOAS (if owned)."""
        if self._closed:
            return
        if self._fd_gone():
            # Closing the iommufd destroyed the IOAS with everything in it (the kernel
            # unmapped and unpinned): forget it without touching a number someone may reuse.
            self._core_mapper.forget_all()
            self._rounded.clear()
            self._closed = True
            return
        try:
            self.unmap_all()
        except KernelError:
            if not self._owned:
                raise
            # IOMMU_DESTROY unmaps and unpins everything itself: an IOAS whose unmap
            # failed is still destroyed rather than leaked in the iommufd.
        if self._owned:
            cmd = uapi.new(uapi.iommu_destroy, id=self._id)
            self._kernel.ioctl(self._fd, uapi.IOMMU_DESTROY, cmd)
            # The kernel dropped every mapping with the IOAS: now the pins may go.
            self._core_mapper.forget_all()
        self._closed = True

    def __repr__(self) -> str:
        return (
            f"<fastmap Ioas {self._id} on {self._kernel.name} fd {self._iommufd!r}: "
            f"{len(self._core_mapper)} mappings>"
        )

    # --- helpers -------------------------------------------------------------------------------
    def _resolve(
        self, buffer_or_va: Buffer | int, length: int | None, writeable: bool
    ) -> tuple[_core.BufferPin | None, int, int]:
        if length is not None:
            length = _checks.integer("length", length)
            if length == 0:
                raise ValueError("length must be positive (a mapping of 0 bytes maps nothing)")
        if isinstance(buffer_or_va, int):  # bool included: _checks refuses it as an address
            va = _checks.integer("va", buffer_or_va)
            if length is None:
                raise ValueError("mapping a raw VA needs a length")
            return None, va, length
        try:
            pin = _core.BufferPin(buffer_or_va, writeable)
        except BufferError as e:
            if writeable:
                raise ValueError(
                    f"{type(buffer_or_va).__name__} buffer is read-only or not contiguous: "
                    "map it with prot=Prot.READ, or pass a writable contiguous buffer"
                ) from e
            raise ValueError(f"{type(buffer_or_va).__name__} is not a contiguous buffer") from e
        except TypeError as e:
            raise TypeError(
                f"cannot map {type(buffer_or_va).__name__}: pass a buffer or an integer VA"
            ) from e
        if length is None:
            length = pin.nbytes
        elif length > pin.nbytes:
            pin.release()
            raise ValueError(f"length {length:#x} is outside the buffer's {pin.nbytes:#x} bytes")
        return pin, pin.address, length


class _Held:
    """What a buffer mapping of DmaMemory holds: the buffer's pin and the memory's lease,
    dropped together with the mapping (or released at once by a failed map)."""

    __slots__ = ("lease", "pin")

    def __init__(self, pin: _core.BufferPin | None, lease: MemoryLease) -> None:
        self.pin = pin
        self.lease = lease

    def release(self) -> None:
        if self.pin is not None:
            self.pin.release()
        self.lease.release()


def _reserved_holes(ranges: list[IovaRange]) -> list[IovaRange]:
    """The complement of the usable ranges in [0, 2^64): reserved IOVA."""
    holes, start = [], 0
    for r in sorted(ranges, key=lambda r: r.start):
        if r.start > start:
            holes.append(IovaRange(start, r.start - 1))
        start = r.last + 1
    if start <= U64_MAX:
        holes.append(IovaRange(start, U64_MAX))
    return holes


def _round_up(n: int, granule: int) -> int:
    return -(-n // granule) * granule


def _release_all(held: Iterable[object]) -> None:
    """A failed map hands back what it was given to keep: release what can be released
    (buffer pins, RAM leases) now rather than when the last reference (perhaps a traceback)
    goes."""
    for obj in held:
        release = getattr(obj, "release", None)
        if callable(release):
            release()


def _allocator_error(err: int, index: int, length: int, align: int) -> Exception:
    """The typed error for an allocator refusal inside a "dense" batch."""
    if err == _errno.ENOSPC:
        return AllocationError(
            f"no free IOVA range holds lengths[{index}] = {length:#x} (align {align:#x})",
            length=length,
            align=align,
            index=index,
        )
    return InvalidRequestError(
        f"lengths[{index}] = {length:#x} cannot be allocated ({_errno.errorcode.get(err, err)})",
        err,
        index,
    )


def page_size() -> int:
    """The host page size."""
    return os.sysconf("SC_PAGE_SIZE")
