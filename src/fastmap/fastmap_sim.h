/* libfastmap_sim: fastmap's simulated Linux kernel (iommufd, VFIO, the selftest mock IOMMU,
 * edu PCI devices) as a C library, usable from any language with a C FFI and without Python.
 *
 * Build against the copy installed with the package:
 *   cc prog.c -I"$(python -c 'import fastmap; print(fastmap.get_include())')" \
 *      -L"$(python -c 'import fastmap; print(fastmap.get_lib_dir())')" -lfastmap_sim \
 *      -Wl,-rpath,"$(python -c 'import fastmap; print(fastmap.get_lib_dir())')"
 *
 * Every call returns a non-negative result or -errno, as the system calls it models; no C++
 * exception crosses this interface. File descriptors are numbers in the simulated process's
 * own fd table (lowest free from 3), not host fds, unless an fd allocator is set.
 * User pointers passed to fastmap_sim_ioctl & co. are addresses of the calling process. */
#ifndef FASTMAP_SIM_H
#define FASTMAP_SIM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FASTMAP_SIM_API_VERSION 1

typedef struct fastmap_sim fastmap_sim;

struct fastmap_sim_config {
  int kernel_version;          /* major*100+minor: 612 = Linux 6.12 */
  int transparent_hugepage;    /* CONFIG_TRANSPARENT_HUGEPAGE */
  int iommufd_test;            /* CONFIG_IOMMUFD_TEST: IOMMU_TEST_CMD exists */
  uint32_t dma_entry_limit;    /* vfio_iommu_type1.dma_entry_limit */
  int cap_sys_resource;        /* the caller holds CAP_SYS_RESOURCE */
  int cap_ipc_lock;            /* the caller holds CAP_IPC_LOCK (pins are not charged) */
  uint64_t rlimit_memlock;     /* RLIMIT_MEMLOCK in bytes */
};

/* The defaults (the newest modelled kernel). */
void fastmap_sim_config_init(struct fastmap_sim_config *cfg);

/* A new simulated kernel with no devices: 0 and *out, or -ENOMEM / -EINVAL. */
int fastmap_sim_create(const struct fastmap_sim_config *cfg, fastmap_sim **out);
/* Closes every fd (newest first, as at process exit) and frees the kernel. NULL is a no-op. */
void fastmap_sim_destroy(fastmap_sim *sim);

/* A PCI device to plug in, bound to vfio-pci. */
struct fastmap_sim_pci_spec {
  const char *bdf;     /* "0000:00:03.0", or lspci's "00:03.0" (domain 0000);
                          NULL or "": the next free slot from 00:03.0 */
  uint16_t vendor;     /* 0: 0x1234 (QEMU) */
  uint16_t device;     /* 0: 0x11e8 (edu) */
  int group;           /* IOMMU group number; -1: a new group of its own */
  const char *iommu;   /* "vtd" (emulated Intel VT-d) or "mock" (the selftest mock IOMMU); NULL: vtd */
  int dirty_tracking;  /* the IOMMU offers dirty tracking */
  const char *kind;    /* the device model: "edu"; NULL: edu */
};

struct fastmap_sim_pci_info {
  char bdf[16];
  unsigned index;      /* N of /dev/vfio/devices/vfioN */
  int group;
  char cdev[64];       /* /dev/vfio/devices/vfioN */
  char group_path[64]; /* /dev/vfio/<group> */
  char sysfs[96];      /* /sys/bus/pci/devices/<bdf> */
};

void fastmap_sim_pci_spec_init(struct fastmap_sim_pci_spec *spec);
/* 0, or -EINVAL (malformed BDF, unknown kind or IOMMU, a group behind another IOMMU),
 * -EEXIST (BDF taken), -ENOSPC (no free slot). info may be NULL. */
int fastmap_sim_add_pci_device(fastmap_sim *sim, const struct fastmap_sim_pci_spec *spec,
                               struct fastmap_sim_pci_info *info);

/* The file calls, as the system calls of the same name on the simulated kernel. */
int fastmap_sim_open(fastmap_sim *sim, const char *path, int flags);
int fastmap_sim_close(fastmap_sim *sim, int fd);
long fastmap_sim_ioctl(fastmap_sim *sim, int fd, unsigned long request, void *arg);
ssize_t fastmap_sim_read(fastmap_sim *sim, int fd, void *buf, size_t count);
ssize_t fastmap_sim_write(fastmap_sim *sim, int fd, const void *buf, size_t count);
ssize_t fastmap_sim_pread(fastmap_sim *sim, int fd, void *buf, size_t count, uint64_t offset);
ssize_t fastmap_sim_pwrite(fastmap_sim *sim, int fd, const void *buf, size_t count,
                           uint64_t offset);
/* 0 and the mapping in *out, or -errno (-ENODEV: the file has no mmap, as /dev/iommu). */
int fastmap_sim_mmap(fastmap_sim *sim, int fd, void *addr, size_t length, int prot, int flags,
                     uint64_t offset, void **out);
/* munmap(2) of a range holding a simulated device mapping (a BAR): 0 or -errno; 1 when the
 * range holds none (the caller unmaps it itself). */
int fastmap_sim_munmap(void *addr, size_t length);
/* 1 and the char device (major, minor) the fd was opened from (fstat's st_rdev); 0 for an
 * anonymous inode (an fd an ioctl handed out); -EBADF. */
int fastmap_sim_chardev(fastmap_sim *sim, int fd, unsigned *major, unsigned *minor);
/* dup2 within the simulated fd table: newfd, or -EBADF. */
int fastmap_sim_dup_to(fastmap_sim *sim, int oldfd, int newfd);
/* 1 when path names a simulated device node (/dev/iommu, /dev/vfio/...), else 0. */
int fastmap_sim_is_node(fastmap_sim *sim, const char *path);
/* stat(2) of a device node: 1 and its char device (major, minor), or -ENOENT. */
int fastmap_sim_node_chardev(fastmap_sim *sim, const char *path, unsigned *major, unsigned *minor);
/* Every device node's path, NUL-separated, sorted: the bytes needed (at most size copied). */
ssize_t fastmap_sim_node_list(fastmap_sim *sim, char *buf, size_t size);

/* The simulated sysfs (/sys/bus/pci/devices/..., /sys/kernel/iommu_groups/...).
 * read_file/read_link copy at most size bytes (no NUL added) and return the full length;
 * list_dir writes the entry names NUL-separated and returns the bytes needed.
 * -ENOENT, -ENOTDIR, -EISDIR, -EINVAL (readlink of a non-link), -ELOOP. */
ssize_t fastmap_sim_sysfs_read(fastmap_sim *sim, const char *path, char *buf, size_t size);
ssize_t fastmap_sim_sysfs_readlink(fastmap_sim *sim, const char *path, char *buf, size_t size);
ssize_t fastmap_sim_sysfs_list(fastmap_sim *sim, const char *path, char *buf, size_t size);
/* realpath(3) within sysfs: the canonical path (as read_file), or -errno. */
ssize_t fastmap_sim_sysfs_realpath(fastmap_sim *sim, const char *path, char *buf, size_t size);
/* 0 if path is a directory, 1 a file, 2 a symlink (not followed), or -errno. */
int fastmap_sim_sysfs_type(fastmap_sim *sim, const char *path);

/* --- Processes (for interposers such as sim-run's; a plain program needs none of this) ---
 * New fds (open, and ioctls that hand out fds) take the number alloc(ctx) returns (or its
 * -errno); release(ctx, fd) gives one back when the install fails. NULL alloc: internal. */
typedef int (*fastmap_sim_fd_alloc)(void *ctx);
typedef void (*fastmap_sim_fd_release)(void *ctx, int fd);
void fastmap_sim_set_fd_allocator(fastmap_sim *sim, fastmap_sim_fd_alloc alloc,
                                  fastmap_sim_fd_release release, void *ctx);
/* Each simulated process has an fd table; table 0 exists from creation. clone copies a
 * table as fork() does (the open files are shared) and returns the new table's id; drop
 * closes every fd of a table (exit, exec). -EBADF for an unknown table. */
int fastmap_sim_table_clone(fastmap_sim *sim, int table);
int fastmap_sim_table_drop(fastmap_sim *sim, int table);
/* For the calling thread: the fd table its calls use, and the process whose memory user
 * pointers refer to (0: this one; else reached with process_vm_readv/writev). */
void fastmap_sim_set_thread_task(int table, pid_t mm_pid);

/* Fault injection (the kernel's /proc/<pid>/task/<tid>/fail-nth), for the calling thread:
 * arm it so that the nth fault-injection site it reaches fails (0 disarms), and read what
 * the fail-nth file would (sites left; 0 once fired). Sites: object and pin allocation
 * (-ENOMEM) and user copies (-EFAULT). */
void fastmap_sim_fail_nth_set(unsigned n);
unsigned fastmap_sim_fail_nth_get(void);
/* Faults injected so far by all threads of this process. */
unsigned long long fastmap_sim_fail_nth_injected(void);

#ifdef __cplusplus
}
#endif

#endif /* FASTMAP_SIM_H */
