// The host libc's functions behind the ones this library interposes (dlsym RTLD_NEXT).
#pragma once

#include <dlfcn.h>

// The next definition of `name` after this library as a function of the given type,
// resolved once per call site (a GNU statement expression holding the cache).
#define FASTMAP_REAL(name, ...)                                           \
  ({                                                                      \
    using fastmap_real_t = __VA_ARGS__;                                   \
    static fastmap_real_t fastmap_real_fn =                               \
        reinterpret_cast<fastmap_real_t>(::dlsym(RTLD_NEXT, name));       \
    fastmap_real_fn;                                                      \
  })
