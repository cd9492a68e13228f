/* Tiny check helpers for the sim-run test programs: the first failed check prints where
 * and why and exits 1. */
#ifndef SIMRUN_CHECK_H
#define SIMRUN_CHECK_H
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond, ...)                                                               \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      int e_ = errno;                                                                  \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                             \
      fprintf(stderr, __VA_ARGS__);                                                    \
      fprintf(stderr, " (errno %d: %s)\n", e_, strerror(e_));                          \
      exit(1);                                                                         \
    }                                                                                  \
  } while (0)

/* expr must fail with -1 and errno e. */
#define EXPECT_ERRNO(expr, e)                                                          \
  do {                                                                                 \
    errno = 0;                                                                         \
    long r_ = (long)(expr);                                                            \
    CHECK(r_ == -1 && errno == (e), "%s: want -1/%s, got %ld", #expr, strerror(e), r_); \
  } while (0)
#endif
