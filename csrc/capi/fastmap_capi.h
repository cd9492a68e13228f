/* fastmap's C-level API for the hot path: map, unmap and translate with no interpreter in
 * between. The one definition, used by the extension (csrc/capi/c_api.cc) and by
 * Cython/C clients (fastmap/capi.pxd; include directory: fastmap.get_include()). It lives
 * beside the C API in csrc/capi and is installed into the fastmap package as data.
 *
 * Get the table with PyCapsule_Import(FASTMAP_CAPI_CAPSULE, 0) and check `version`; get a
 * mapper from an Ioas with PyCapsule_GetPointer(ioas._c_mapper(), FASTMAP_MAPPER_CAPSULE).
 * The mapper lives as long as its Ioas: keep the Ioas alive while using it. Calls never
 * raise, need no GIL, and return 0 or -errno (like the system calls behind them).
 * Memory mapped by raw VA here is the caller's to keep alive until it is unmapped. */
#ifndef FASTMAP_CAPI_H
#define FASTMAP_CAPI_H

#include <stdint.h>

#define FASTMAP_CAPI_VERSION 1u
#define FASTMAP_CAPI_CAPSULE "fastmap._core._C_API"
#define FASTMAP_MAPPER_CAPSULE "fastmap.mapper"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fastmap_mapper fastmap_mapper; /* an Ioas's batch mapper (opaque) */

/* IOMMU_IOAS_MAP_READABLE / _WRITEABLE */
#define FASTMAP_PROT_READ 4u
#define FASTMAP_PROT_WRITE 2u

typedef struct fastmap_capi {
  uint32_t version;
  /* Map [va, va+length) at *iova when `fixed`, else where the kernel chooses (written to
   * *iova). prot: FASTMAP_PROT_* bits. */
  int (*map)(fastmap_mapper* m, uint64_t va, uint64_t length, uint64_t* iova, uint32_t prot,
             int fixed);
  /* Unmap the mappings wholly inside [iova, iova+length). */
  int (*unmap)(fastmap_mapper* m, uint64_t iova, uint64_t length);
  /* -ENOENT when nothing mapped through fastmap covers the address. */
  int (*translate_iova)(fastmap_mapper* m, uint64_t iova, uint64_t* va);
  int (*translate_va)(fastmap_mapper* m, uint64_t va, uint64_t* iova);
} fastmap_capi;

#ifdef __cplusplus
}
#endif

#endif /* FASTMAP_CAPI_H */
