# cython: language_level=3
"""fastmap's C-level API for Cython: map, unmap and translate at C speed, without the GIL.

    from fastmap cimport capi
    cdef capi.fastmap_capi* api = capi.import_capi()
    cdef capi.fastmap_mapper* m = capi.mapper_of(ioas)      # keep `ioas` alive
    with nogil:
        rc = api.map(m, va, length, &iova, capi.FASTMAP_PROT_READ | capi.FASTMAP_PROT_WRITE, 1)

Build with include_dirs=[fastmap.get_include()]. Calls return 0 or -errno.
"""

from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_Import
from libc.stdint cimport uint32_t, uint64_t


cdef extern from "fastmap_capi.h" nogil:
    ctypedef struct fastmap_mapper:
        pass

    ctypedef struct fastmap_capi:
        uint32_t version
        int (*map)(fastmap_mapper* m, uint64_t va, uint64_t length, uint64_t* iova,
                   uint32_t prot, int fixed) nogil
        int (*unmap)(fastmap_mapper* m, uint64_t iova, uint64_t length) nogil
        int (*translate_iova)(fastmap_mapper* m, uint64_t iova, uint64_t* va) nogil
        int (*translate_va)(fastmap_mapper* m, uint64_t va, uint64_t* iova) nogil

    uint32_t FASTMAP_CAPI_VERSION
    const char* FASTMAP_CAPI_CAPSULE
    const char* FASTMAP_MAPPER_CAPSULE
    uint32_t FASTMAP_PROT_READ
    uint32_t FASTMAP_PROT_WRITE


cdef inline fastmap_capi* import_capi() except NULL:
    """The function table exported by fastmap._core, version-checked."""
    cdef fastmap_capi* api = <fastmap_capi*>PyCapsule_Import(FASTMAP_CAPI_CAPSULE, 0)
    if api.version != FASTMAP_CAPI_VERSION:
        raise ImportError(
            f"fastmap C API version {api.version}, this module was built for "
            f"{FASTMAP_CAPI_VERSION}: rebuild it against the installed fastmap"
        )
    return api


cdef inline fastmap_mapper* mapper_of(object ioas) except NULL:
    """The C mapper of a fastmap.ioas.Ioas; valid while the Ioas lives."""
    return <fastmap_mapper*>PyCapsule_GetPointer(ioas._c_mapper(), FASTMAP_MAPPER_CAPSULE)
