# cython: language_level=3
"""A tiny 'driver' written against fastmap's C API: the hot loop runs without the GIL."""

from libc.stdint cimport uint64_t

from fastmap cimport capi


def map_pages(ioas, uint64_t va, uint64_t iova, uint64_t pages, uint64_t page):
    """Map `pages` pages of VA at consecutive fixed IOVAs; returns the first -errno or 0."""
    cdef capi.fastmap_capi* api = capi.import_capi()
    cdef capi.fastmap_mapper* m = capi.mapper_of(ioas)
    cdef uint64_t i, at
    cdef int rc = 0
    with nogil:
        for i in range(pages):
            at = iova + i * page
            rc = api.map(m, va + i * page, page, &at, capi.FASTMAP_PROT_READ | capi.FASTMAP_PROT_WRITE, 1)
            if rc != 0:
                break
    return rc


def translate_all(ioas, uint64_t iova, uint64_t pages, uint64_t page):
    """VA of each page's IOVA (None where unmapped), looked up through the C API."""
    cdef capi.fastmap_capi* api = capi.import_capi()
    cdef capi.fastmap_mapper* m = capi.mapper_of(ioas)
    cdef uint64_t i, va = 0
    out = []
    for i in range(pages):
        out.append(va if api.translate_iova(m, iova + i * page, &va) == 0 else None)
    return out


def auto_map_and_back(ioas, uint64_t va, uint64_t length):
    """Map with a kernel-chosen IOVA, translate the VA back to it, unmap: (iova, rc...)."""
    cdef capi.fastmap_capi* api = capi.import_capi()
    cdef capi.fastmap_mapper* m = capi.mapper_of(ioas)
    cdef uint64_t iova = 0, back = 0
    cdef int rc_map, rc_tr, rc_unmap, rc_again
    with nogil:
        rc_map = api.map(m, va, length, &iova, capi.FASTMAP_PROT_READ, 0)
        rc_tr = api.translate_va(m, va, &back)
        rc_unmap = api.unmap(m, iova, length)
        rc_again = api.unmap(m, iova, length)
    return iova, back, rc_map, rc_tr, rc_unmap, rc_again
