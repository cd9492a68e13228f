"""The kernel uAPI as Python objects: ctypes structs and named constants.

Every struct here is generated at import from the C++ layout registry (csrc/uapi/, exposed as
`fastmap._core.uapi_structs()`), and every layout is checked field by field against the C++
one (see fastmap._layout), so there is exactly one definition of each layout. Constants come
from `fastmap._core.uapi_constants()`.

The declarations below only give mypy the names and types; the values are filled in from
_core when the module loads. A test (tests/test_uapi.py) checks that the declared names and
_core's names are the same set, so the two cannot drift apart.

Field names follow the kernel headers, except that `__reserved` is spelled `reserved`.

    >>> from fastmap import uapi
    >>> m = uapi.new(uapi.iommu_ioas_map, ioas_id=1, length=4096)
    >>> m.size == ctypes.sizeof(uapi.iommu_ioas_map)
    True
"""

from __future__ import annotations

import ctypes
from typing import Any, TypeVar

from fastmap import _core
from fastmap._layout import SIZE_FIELDS, LayoutError, UapiStruct, UapiUnion, build_structs

__all__ = ["LayoutError", "UapiStruct", "UapiUnion", "new", "offsetofend", "request_name"]

# --- structs (generated from _core.uapi_structs()) -------------------------------------
iommu_destroy: type[UapiStruct]
iommu_ioas_alloc: type[UapiStruct]
iommu_iova_range: type[UapiStruct]
iommu_ioas_iova_ranges: type[UapiStruct]
iommu_ioas_allow_iovas: type[UapiStruct]
iommu_ioas_map: type[UapiStruct]
iommu_ioas_map_file: type[UapiStruct]
iommu_ioas_copy: type[UapiStruct]
iommu_ioas_unmap: type[UapiStruct]
iommu_option: type[UapiStruct]
iommu_vfio_ioas: type[UapiStruct]
iommu_hwpt_alloc: type[UapiStruct]
iommu_hw_info: type[UapiStruct]
iommu_hw_info_vtd: type[UapiStruct]
iommu_hwpt_set_dirty_tracking: type[UapiStruct]
iommu_hwpt_get_dirty_bitmap: type[UapiStruct]
iommu_hwpt_invalidate: type[UapiStruct]
iommu_fault_alloc: type[UapiStruct]
iommu_ioas_change_process: type[UapiStruct]
iommu_test_add_reserved: type[UapiStruct]
iommu_test_mock_domain: type[UapiStruct]
iommu_test_mock_domain_flags: type[UapiStruct]
iommu_test_mock_domain_replace: type[UapiStruct]
iommu_test_check_map: type[UapiStruct]
iommu_test_dirty: type[UapiStruct]
iommu_test_check_refs: type[UapiStruct]
iommu_test_create_access: type[UapiStruct]
iommu_test_destroy_access_pages: type[UapiStruct]
iommu_test_access_pages: type[UapiStruct]
iommu_test_access_rw: type[UapiStruct]
iommu_test_memory_limit: type[UapiStruct]
iommu_test_access_replace_ioas: type[UapiStruct]
iommu_test_cmd_payload: type[UapiUnion]
iommu_test_cmd: type[UapiStruct]
vfio_device_info: type[UapiStruct]
vfio_region_info: type[UapiStruct]
vfio_device_feature: type[UapiStruct]
vfio_device_feature_migration: type[UapiStruct]
vfio_device_feature_mig_state: type[UapiStruct]
vfio_device_feature_mig_data_size: type[UapiStruct]
vfio_precopy_info: type[UapiStruct]
vfio_irq_info: type[UapiStruct]
vfio_irq_set: type[UapiStruct]
vfio_device_bind_iommufd: type[UapiStruct]
vfio_device_attach_iommufd_pt: type[UapiStruct]
vfio_device_detach_iommufd_pt: type[UapiStruct]
vfio_group_status: type[UapiStruct]
vfio_info_cap_header: type[UapiStruct]
vfio_region_sparse_mmap_area: type[UapiStruct]
vfio_region_info_cap_sparse_mmap: type[UapiStruct]
vfio_iommu_type1_info: type[UapiStruct]
vfio_iova_range: type[UapiStruct]
vfio_iommu_type1_info_cap_iova_range: type[UapiStruct]
vfio_iommu_type1_info_cap_migration: type[UapiStruct]
vfio_iommu_type1_info_dma_avail: type[UapiStruct]
vfio_iommu_type1_dma_map: type[UapiStruct]
vfio_bitmap: type[UapiStruct]
vfio_iommu_type1_dma_unmap: type[UapiStruct]
vfio_iommu_type1_dirty_bitmap: type[UapiStruct]
vfio_iommu_type1_dirty_bitmap_get: type[UapiStruct]

# --- constants (from _core.uapi_constants()) --------------------------------------------
IOMMUFD_TYPE: int
IOMMUFD_CMD_BASE: int
IOMMU_DESTROY: int
IOMMU_IOAS_ALLOC: int
IOMMU_IOAS_ALLOW_IOVAS: int
IOMMU_IOAS_COPY: int
IOMMU_IOAS_IOVA_RANGES: int
IOMMU_IOAS_MAP: int
IOMMU_IOAS_UNMAP: int
IOMMU_OPTION: int
IOMMU_VFIO_IOAS: int
IOMMU_HWPT_ALLOC: int
IOMMU_GET_HW_INFO: int
IOMMU_HWPT_SET_DIRTY_TRACKING: int
IOMMU_HWPT_GET_DIRTY_BITMAP: int
IOMMU_HWPT_INVALIDATE: int
IOMMU_FAULT_QUEUE_ALLOC: int
IOMMU_IOAS_MAP_FILE: int
IOMMU_VIOMMU_ALLOC: int
IOMMU_VDEVICE_ALLOC: int
IOMMU_IOAS_CHANGE_PROCESS: int
IOMMU_IOAS_MAP_FIXED_IOVA: int
IOMMU_IOAS_MAP_WRITEABLE: int
IOMMU_IOAS_MAP_READABLE: int
IOMMU_OPTION_RLIMIT_MODE: int
IOMMU_OPTION_HUGE_PAGES: int
IOMMU_OPTION_OP_SET: int
IOMMU_OPTION_OP_GET: int
IOMMU_VFIO_IOAS_GET: int
IOMMU_VFIO_IOAS_SET: int
IOMMU_VFIO_IOAS_CLEAR: int
IOMMU_HWPT_ALLOC_NEST_PARENT: int
IOMMU_HWPT_ALLOC_DIRTY_TRACKING: int
IOMMU_HWPT_FAULT_ID_VALID: int
IOMMU_HWPT_ALLOC_PASID: int
IOMMU_HWPT_DATA_NONE: int
IOMMU_HWPT_DATA_VTD_S1: int
IOMMU_HWPT_DATA_ARM_SMMUV3: int
IOMMU_HW_INFO_TYPE_NONE: int
IOMMU_HW_INFO_TYPE_INTEL_VTD: int
IOMMU_HW_INFO_TYPE_ARM_SMMUV3: int
IOMMU_HW_CAP_DIRTY_TRACKING: int
IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17: int
IOMMU_HWPT_DIRTY_TRACKING_ENABLE: int
IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR: int
IOMMU_TEST_CMD: int
IOMMU_TEST_OP_ADD_RESERVED: int
IOMMU_TEST_OP_MOCK_DOMAIN: int
IOMMU_TEST_OP_MD_CHECK_MAP: int
IOMMU_TEST_OP_MD_CHECK_REFS: int
IOMMU_TEST_OP_CREATE_ACCESS: int
IOMMU_TEST_OP_DESTROY_ACCESS_PAGES: int
IOMMU_TEST_OP_ACCESS_PAGES: int
IOMMU_TEST_OP_ACCESS_RW: int
IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT: int
IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE: int
IOMMU_TEST_OP_ACCESS_REPLACE_IOAS: int
IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS: int
IOMMU_TEST_OP_DIRTY: int
MOCK_APERTURE_START: int
MOCK_APERTURE_LAST: int
MOCK_FLAGS_DEVICE_NO_DIRTY: int
MOCK_FLAGS_DEVICE_HUGE_IOVA: int
MOCK_FLAGS_ACCESS_WRITE: int
MOCK_FLAGS_ACCESS_SYZ: int
MOCK_ACCESS_RW_WRITE: int
MOCK_ACCESS_RW_SLOW_PATH: int
MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES: int
IOMMU_HW_INFO_TYPE_SELFTEST: int
IOMMU_HW_INFO_SELFTEST_REGVAL: int
VFIO_TYPE: int
VFIO_BASE: int
VFIO_GET_API_VERSION: int
VFIO_CHECK_EXTENSION: int
VFIO_SET_IOMMU: int
VFIO_GROUP_GET_STATUS: int
VFIO_GROUP_SET_CONTAINER: int
VFIO_GROUP_UNSET_CONTAINER: int
VFIO_GROUP_GET_DEVICE_FD: int
VFIO_DEVICE_GET_INFO: int
VFIO_DEVICE_GET_REGION_INFO: int
VFIO_DEVICE_GET_IRQ_INFO: int
VFIO_DEVICE_SET_IRQS: int
VFIO_DEVICE_RESET: int
VFIO_IOMMU_GET_INFO: int
VFIO_IOMMU_MAP_DMA: int
VFIO_IOMMU_UNMAP_DMA: int
VFIO_IOMMU_DIRTY_PAGES: int
VFIO_DEVICE_FEATURE: int
VFIO_MIG_GET_PRECOPY_INFO: int
VFIO_DEVICE_BIND_IOMMUFD: int
VFIO_DEVICE_ATTACH_IOMMUFD_PT: int
VFIO_DEVICE_DETACH_IOMMUFD_PT: int
VFIO_API_VERSION: int
VFIO_TYPE1_IOMMU: int
VFIO_SPAPR_TCE_IOMMU: int
VFIO_TYPE1v2_IOMMU: int
VFIO_DMA_CC_IOMMU: int
VFIO_EEH: int
VFIO_TYPE1_NESTING_IOMMU: int
VFIO_SPAPR_TCE_v2_IOMMU: int
VFIO_NOIOMMU_IOMMU: int
VFIO_UNMAP_ALL: int
VFIO_UPDATE_VADDR: int
VFIO_GROUP_FLAGS_VIABLE: int
VFIO_GROUP_FLAGS_CONTAINER_SET: int
VFIO_DEVICE_FLAGS_RESET: int
VFIO_DEVICE_FLAGS_PCI: int
VFIO_DEVICE_FLAGS_CAPS: int
VFIO_REGION_INFO_FLAG_READ: int
VFIO_REGION_INFO_FLAG_WRITE: int
VFIO_REGION_INFO_FLAG_MMAP: int
VFIO_REGION_INFO_FLAG_CAPS: int
VFIO_PCI_BAR0_REGION_INDEX: int
VFIO_PCI_BAR5_REGION_INDEX: int
VFIO_PCI_ROM_REGION_INDEX: int
VFIO_PCI_CONFIG_REGION_INDEX: int
VFIO_PCI_VGA_REGION_INDEX: int
VFIO_PCI_NUM_REGIONS: int
VFIO_PCI_NUM_IRQS: int
VFIO_IOMMU_INFO_PGSIZES: int
VFIO_IOMMU_INFO_CAPS: int
VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: int
VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION: int
VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL: int
VFIO_DMA_MAP_FLAG_READ: int
VFIO_DMA_MAP_FLAG_WRITE: int
VFIO_DMA_MAP_FLAG_VADDR: int
VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: int
VFIO_DMA_UNMAP_FLAG_ALL: int
VFIO_DMA_UNMAP_FLAG_VADDR: int
VFIO_IOMMU_DIRTY_PAGES_FLAG_START: int
VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP: int
VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP: int
VFIO_PCI_INTX_IRQ_INDEX: int
VFIO_PCI_MSI_IRQ_INDEX: int
VFIO_PCI_MSIX_IRQ_INDEX: int
VFIO_PCI_ERR_IRQ_INDEX: int
VFIO_PCI_REQ_IRQ_INDEX: int
VFIO_IRQ_INFO_EVENTFD: int
VFIO_IRQ_INFO_MASKABLE: int
VFIO_IRQ_INFO_AUTOMASKED: int
VFIO_IRQ_INFO_NORESIZE: int
VFIO_IRQ_SET_DATA_NONE: int
VFIO_IRQ_SET_DATA_BOOL: int
VFIO_IRQ_SET_DATA_EVENTFD: int
VFIO_IRQ_SET_ACTION_MASK: int
VFIO_IRQ_SET_ACTION_UNMASK: int
VFIO_IRQ_SET_ACTION_TRIGGER: int
VFIO_IRQ_SET_DATA_TYPE_MASK: int
VFIO_IRQ_SET_ACTION_TYPE_MASK: int
VFIO_REGION_INFO_CAP_SPARSE_MMAP: int
VFIO_REGION_INFO_CAP_TYPE: int
VFIO_REGION_INFO_CAP_MSIX_MAPPABLE: int
VFIO_DEVICE_FEATURE_MASK: int
VFIO_DEVICE_FEATURE_GET: int
VFIO_DEVICE_FEATURE_SET: int
VFIO_DEVICE_FEATURE_PROBE: int
VFIO_DEVICE_FEATURE_MIGRATION: int
VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE: int
VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: int
VFIO_MIGRATION_STOP_COPY: int
VFIO_MIGRATION_P2P: int
VFIO_MIGRATION_PRE_COPY: int
VFIO_DEVICE_STATE_ERROR: int
VFIO_DEVICE_STATE_STOP: int
VFIO_DEVICE_STATE_RUNNING: int
VFIO_DEVICE_STATE_STOP_COPY: int
VFIO_DEVICE_STATE_RESUMING: int
VFIO_DEVICE_STATE_RUNNING_P2P: int
VFIO_DEVICE_STATE_PRE_COPY: int
VFIO_DEVICE_STATE_PRE_COPY_P2P: int

STRUCTS: dict[str, type[UapiStruct | UapiUnion]] = build_structs(_core.uapi_structs())
CONSTANTS: dict[str, int] = dict(_core.uapi_constants())
globals().update(STRUCTS)
globals().update(CONSTANTS)
__all__ += [*STRUCTS, *CONSTANTS]

_T = TypeVar("_T", bound="ctypes.Structure | ctypes.Union")


def new(cls: type[_T], **fields: Any) -> _T:
    """Instantiate a uAPI struct with `fields`; a leading size/argsz field gets sizeof.

    This is what every iommufd/VFIO caller must do: the kernel reads the struct size from
    that first field to decide which version of the struct it was given.
    """
    obj = cls(**fields)
    first = cls._fields_[0][0]
    if first in SIZE_FIELDS and first not in fields:
        setattr(obj, first, ctypes.sizeof(cls))
    return obj


def offsetofend(cls: type[ctypes.Structure | ctypes.Union], field: str) -> int:
    """offsetofend(struct, field): the kernel's min_size for an extensible ioctl struct."""
    descr = getattr(cls, field)
    return int(descr.offset + descr.size)


def _request_names() -> dict[int, str]:
    # ioctl requests are the constants of the form _IO(';', nr) with nr in the VFIO
    # (0x64...) or IOMMUFD (0x80...) command ranges; flags and ids never reach 0x3b64.
    lo = (CONSTANTS["VFIO_TYPE"] << 8) | CONSTANTS["VFIO_BASE"]
    hi = (CONSTANTS["IOMMUFD_TYPE"] << 8) | 0xFF
    names: dict[int, list[str]] = {}
    for name, value in CONSTANTS.items():
        if lo <= value <= hi and not name.endswith(("_TYPE", "_BASE")):
            names.setdefault(value, []).append(name)
    # One number can mean two calls (VFIO_DEVICE_FEATURE on a device fd is
    # VFIO_IOMMU_DIRTY_PAGES on a container): name both.
    return {value: "|".join(sorted(ns)) for value, ns in names.items()}


_REQUEST_NAMES = _request_names()


def request_name(request: int) -> str:
    """The name of an ioctl request number, e.g. 0x3b85 -> 'IOMMU_IOAS_MAP'."""
    name = _REQUEST_NAMES.get(request)
    if name is not None:
        return name
    if request >> 8 == CONSTANTS["IOMMUFD_TYPE"]:
        return f"_IO(';', {request & 0xFF:#x})"
    return f"ioctl {request:#x}"
