"""The host's files (/dev, /sys, /proc, /boot, /run) below an injectable root.

`HostFiles("/")` is the running system; `HostFiles(tmp)` a fake tree for tests, so that the
doctor and the binder can be exercised without touching the machine's devices.
"""

from __future__ import annotations

import gzip
import os
import stat


class HostFiles:
    """Read (and, for the binder, write) absolute paths below `root`."""

    def __init__(self, root: str = "/") -> None:
        self.root = root

    @property
    def is_real(self) -> bool:
        """True for the running system's own files (root "/")."""
        return os.path.abspath(self.root) == "/"

    def path(self, path: str) -> str:
        """The path on this machine of `path` (absolute, as the kernel names it)."""
        return os.path.join(self.root, path.lstrip("/"))

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.path(path))

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(self.path(path))

    def is_char_device(self, path: str) -> bool:
        """A char device (the fake tree may stand in with a regular file: also accepted
        there, so tests can model device nodes)."""
        try:
            mode = os.stat(self.path(path)).st_mode
        except OSError:
            return False
        return stat.S_ISCHR(mode) or (not self.is_real and stat.S_ISREG(mode))

    def access(self, path: str, mode: int = os.R_OK | os.W_OK) -> bool:
        return os.access(self.path(path), mode)

    def read(self, path: str) -> str | None:
        """The file's text, stripped; None when it cannot be read."""
        try:
            with open(self.path(path), "rb") as f:
                data = f.read()
        except OSError:
            return None
        if path.endswith(".gz"):
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError):
                return None
        return data.decode(errors="replace").strip()

    def readlink_name(self, path: str) -> str | None:
        """The last component of a symlink's target (a driver's or group's name), or None."""
        try:
            return os.path.basename(os.readlink(self.path(path)))
        except OSError:
            return None

    def listdir(self, path: str) -> list[str]:
        """Sorted names in a directory; [] when it is missing or unreadable."""
        try:
            return sorted(os.listdir(self.path(path)))
        except OSError:
            return []

    def write(self, path: str, text: str) -> None:
        """Write `text` to a sysfs attribute (one write, as `echo` does); OSError on failure."""
        with open(self.path(path), "w") as f:
            f.write(text)
