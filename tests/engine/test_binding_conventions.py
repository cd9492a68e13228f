"""What the bindings promise: one error convention and one bitmap-size definition.

A core failure reaches Python as fastmap's typed KernelError (never a bare OSError), and
stays catchable as the builtin OSError subclass the errno implies; the core's bitmap size and
fastmap.bitmap's agree.
"""

from __future__ import annotations

import errno

import numpy as np
import pytest

from fastmap import _core, bitmap
from fastmap.errors import (
    BadFdError,
    InvalidArgumentError,
    KernelError,
    NoDeviceError,
    NotFoundError,
)

needs_sim = pytest.mark.skipif(
    not hasattr(_core, "SimKernel"), reason="built without the simulator"
)


@needs_sim
def test_a_missing_sysfs_path_is_a_typed_not_found_error() -> None:
    k = _core.SimKernel()
    with pytest.raises(NotFoundError) as e:
        k.machine.list_dir("/sys/bus/pci/devices/0000:99:00.0")
    assert isinstance(e.value, FileNotFoundError)
    assert e.value.errno == errno.ENOENT
    assert e.value.call == "/sys/bus/pci/devices/0000:99:00.0"


@needs_sim
def test_an_unknown_device_and_a_closed_fd_are_typed_errors() -> None:
    k = _core.SimKernel()
    with pytest.raises(NoDeviceError):
        k.machine.edu_buffer("0000:99:00.0")
    with pytest.raises(NoDeviceError):
        k.machine.dma_faults("0000:99:00.0")
    with pytest.raises(BadFdError):
        k.chardev_of(12345)
    with pytest.raises(InvalidArgumentError):
        k.machine.add_pci_device(iommu="nonesuch")


def test_a_bitmap_call_that_would_overrun_is_a_typed_error() -> None:
    with pytest.raises(KernelError) as e:
        _core.bitmap_popcount(np.zeros(1, np.uint64), 65)
    assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize(
    ("length", "page_size"),
    [
        (0, 4096),
        (1, 4096),
        (4096, 4096),
        (4097, 4096),
        (64 * 4096, 4096),
        (64 * 4096 + 1, 4096),
        (2**64 - 1, 4096),
        (2**64 - 1, 1),
        (12345, 512),
        (1 << 40, 1 << 21),
    ],
)
def test_bitmap_words_is_one_definition_in_each_language(length: int, page_size: int) -> None:
    pages = (length + page_size - 1) // page_size  # exact: Python ints do not overflow
    expected = (pages + 63) // 64
    assert _core.bitmap_words(length, page_size) == expected
    assert bitmap.words_for_length(length, page_size) == expected


@needs_sim
def test_a_file_listed_as_a_directory_is_not_a_directory_error() -> None:
    # As os.listdir on a file: SimSysfs.exists() depends on telling the two apart.
    k = _core.SimKernel()
    dev = k.machine.add_pci_device()
    with pytest.raises(NotADirectoryError) as e:
        k.machine.list_dir(f"{dev['sysfs']}/vendor")
    assert isinstance(e.value, KernelError) and e.value.errno == errno.ENOTDIR
