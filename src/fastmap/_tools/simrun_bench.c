/* The per-ioctl cost of the simulated kernel's entry paths: `simrun_bench MODE N` runs N
 * IOMMU_OPTION(RLIMIT_MODE, GET) calls (the cheapest iommufd ioctl: what is measured is
 * the path, not the work) and prints "MODE ns_per_call".
 *   direct  fastmap_sim_ioctl() on libfastmap_sim, no interposer
 *   owner   ioctl() under `fastmap sim-run`, in the process hosting the simulator
 *   child   ioctl() under `fastmap sim-run`, in a forked child (forwarded to the owner)
 *   host    ioctl() on the host's /dev/null (ENOTTY): the bare system call, for scale */
#include <fastmap_sim.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct iommu_option {
  uint32_t size, option_id;
  uint16_t op, reserved;
  uint32_t object_id;
  uint64_t val64;
};
#define IOMMU_OPTION _IO(';', 0x87)

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int run(const char* mode, int fd, fastmap_sim* sim, long n) {
  struct iommu_option opt = {.size = sizeof opt, .option_id = 0, .op = 1};
  int expect = strcmp(mode, "host") == 0 ? -1 : 0;
  double t0 = now();
  for (long i = 0; i < n; ++i) {
    long rc = sim ? fastmap_sim_ioctl(sim, fd, IOMMU_OPTION, &opt) : ioctl(fd, IOMMU_OPTION, &opt);
    if ((rc < 0 ? -1 : 0) != expect) {
      fprintf(stderr, "%s: ioctl returned %ld\n", mode, rc);
      return 1;
    }
  }
  printf("%s %.1f\n", mode, (now() - t0) * 1e9 / (double)n);
  fflush(stdout);
  return 0;
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s direct|owner|child|host N\n", argv[0]);
    return 2;
  }
  const char* mode = argv[1];
  long n = atol(argv[2]);
  if (strcmp(mode, "direct") == 0) {
    fastmap_sim* sim = NULL;
    if (fastmap_sim_create(NULL, &sim) != 0) return 1;
    int fd = fastmap_sim_open(sim, "/dev/iommu", O_RDWR);
    int rc = fd < 0 ? 1 : run(mode, fd, sim, n);
    fastmap_sim_destroy(sim);
    return rc;
  }
  int fd = open(strcmp(mode, "host") == 0 ? "/dev/null" : "/dev/iommu", O_RDWR);
  if (fd < 0) {
    perror("open");
    return 1;
  }
  if (strcmp(mode, "child") != 0) return run(mode, fd, NULL, n);
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) _exit(run(mode, fd, NULL, n));
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
