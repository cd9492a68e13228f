"""A gzip'd initramfs (cpio "newc", as the kernel's gen_init_cpio writes it) holding one
static program as /init, the /dev/console node the kernel opens for it, and the /proc and
/sys mount points. Written directly, so no root, cpio or device nodes on the host are needed."""

from __future__ import annotations

import gzip
import stat
from pathlib import Path


def _entry(
    name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0), ino: int = 0
) -> bytes:
    encoded = name.encode() + b"\0"
    fields = [
        ino,
        mode,
        0,
        0,
        2 if stat.S_ISDIR(mode) else 1,
        0,
        len(data),
        0,
        0,
        rdev[0],
        rdev[1],
        len(encoded),
        0,
    ]
    head = b"070701" + b"".join(f"{v:08x}".encode() for v in fields) + encoded
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)


def build(init_program: Path, out: Path) -> Path:
    """Write the initramfs with `init_program` as /init to `out`."""
    entries = [
        ("dev", stat.S_IFDIR | 0o755, b"", (0, 0)),
        ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
        ("proc", stat.S_IFDIR | 0o755, b"", (0, 0)),
        ("sys", stat.S_IFDIR | 0o755, b"", (0, 0)),
        ("init", stat.S_IFREG | 0o755, init_program.read_bytes(), (0, 0)),
    ]
    archive = b"".join(
        _entry(name, mode, data, rdev, ino=i + 1)
        for i, (name, mode, data, rdev) in enumerate(entries)
    )
    archive += _entry("TRAILER!!!", 0)
    out.write_bytes(gzip.compress(archive, compresslevel=6, mtime=0))
    return out
