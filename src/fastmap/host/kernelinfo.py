"""The running kernel's release, build options and privileges, read from /proc and /boot."""

from __future__ import annotations

import re

from fastmap.host.files import HostFiles

CAP_IPC_LOCK = 14


def release(files: HostFiles) -> str:
    return files.read("/proc/sys/kernel/osrelease") or "unknown"


def config(files: HostFiles) -> tuple[dict[str, str], str] | None:
    """The kernel's build options ({CONFIG_X: 'y'|'m'|value}, options that are "not set"
    absent) and where they came from; None when neither /proc/config.gz nor
    /boot/config-RELEASE is there."""
    for path in ("/proc/config.gz", f"/boot/config-{release(files)}"):
        text = files.read(path)
        if text is None:
            continue
        options = {}
        for line in text.splitlines():
            name, sep, value = line.partition("=")
            if sep and name.startswith("CONFIG_"):
                options[name] = value.strip('"')
        return options, path
    return None


def in_vm(files: HostFiles) -> bool:
    """The CPU says it runs under a hypervisor (the cpuinfo `hypervisor` flag)."""
    text = files.read("/proc/cpuinfo") or ""
    return bool(re.search(r"^flags\s*:.*\bhypervisor\b", text, re.M))


def memlock(files: HostFiles) -> tuple[int | None, int | None] | None:
    """(soft, hard) RLIMIT_MEMLOCK in bytes, None meaning unlimited; from /proc/self/limits."""
    for line in (files.read("/proc/self/limits") or "").splitlines():
        if line.startswith("Max locked memory"):
            fields = line[len("Max locked memory") :].split()
            if len(fields) >= 2:

                def value(text: str) -> int | None:
                    return None if text == "unlimited" else int(text)

                try:
                    return value(fields[0]), value(fields[1])
                except ValueError:
                    return None
    return None


def has_capability(files: HostFiles, cap: int) -> bool:
    """The effective capability set (/proc/self/status CapEff) holds `cap`."""
    for line in (files.read("/proc/self/status") or "").splitlines():
        if line.startswith("CapEff:"):
            try:
                return bool((int(line.split()[1], 16) >> cap) & 1)
            except (IndexError, ValueError):
                return False
    return False


def cmdline(files: HostFiles) -> str:
    return files.read("/proc/cmdline") or ""
