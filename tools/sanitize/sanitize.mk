# Sanitizer builds and fuzzing (included by the Makefile). See tools/sanitize/README.md.
#
# The extension is compiled here, not by setup.py, so that its objects can be shared with
# the C++ drivers in tests/cpp and built in any order; the source list is still setup.py's
# (tools/sanitize/sources.py). Everything lands in build/asan and build/tsan: the normal
# build in .venv/src is never touched.

SAN_PY       := $(if $(wildcard $(PY)),$(PY),$(PYTHON))
SAN_SOURCES  := $(shell $(SAN_PY) tools/sanitize/sources.py 2>/dev/null)
SAN_LIB_SRCS := $(filter-out csrc/bindings/%,$(SAN_SOURCES))
SAN_EXT      := $(shell $(SAN_PY) -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))" 2>/dev/null)
SAN_PYINC    := $(shell $(SAN_PY) -m pybind11 --includes 2>/dev/null)
SAN_CXX      := $(if $(shell command -v ccache),ccache g++,g++)
export CCACHE_BASEDIR ?= $(CURDIR)
SAN_JOBS     ?= 2

ASAN_SAN := -fsanitize=address,undefined -fno-sanitize-recover=all
TSAN_SAN := -fsanitize=thread
SAN_CXXFLAGS = -std=c++20 -O1 -g1 -fno-omit-frame-pointer -fPIC -fvisibility=hidden \
  -Wall -Wextra -Werror -Icsrc -Isrc/fastmap $(SAN_PYINC) -MMD -MP

# CPython leaks by design (interned objects, arenas it never returns), so LeakSanitizer is
# off for the Python runs; the C++ drivers run with it on. allow_user_segv_handler lets the
# simulator's fault fixup (user_memory.cc) own SIGSEGV, as it does in the normal build.
# libstdc++ is preloaded with the runtime: python is not linked against it, so without it
# the runtime's __cxa_throw interceptor finds no real __cxa_throw and the first C++
# exception thrown by the extension aborts ("real___cxa_throw != 0" CHECK).
STDCXX_RT    := $(shell g++ -print-file-name=libstdc++.so.6)
ASAN_RT      := $(shell g++ -print-file-name=libasan.so) $(STDCXX_RT)
TSAN_RT      := $(shell g++ -print-file-name=libtsan.so) $(STDCXX_RT)
ASAN_ENV     := ASAN_OPTIONS=detect_leaks=0:allow_user_segv_handler=1:abort_on_error=1:detect_stack_use_after_return=0 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 PYTHONMALLOC=malloc FASTMAP_SANITIZER=asan
CPP_ASAN_ENV := ASAN_OPTIONS=detect_leaks=1:allow_user_segv_handler=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
TSAN_ENV     := TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:report_signal_unsafe=0:suppressions=$(CURDIR)/tools/sanitize/tsan.supp \
  FASTMAP_SANITIZER=tsan
SAN_PYTEST   := -m pytest -q -m "not vm" -p no:cacheprovider

FUZZ_SECONDS ?= 600
FUZZ_THREADS ?= 4
FUZZ_SEED    ?=
FUZZ_ARGS     = $(if $(FUZZ_SEED),--seed $(FUZZ_SEED))

define san_objs
$(patsubst %.cc,build/$(1)/obj/%.o,$(2))
endef

build/asan/obj/%.o: %.cc
	@mkdir -p $(@D)
	$(SAN_CXX) $(ASAN_SAN) $(SAN_CXXFLAGS) -c $< -o $@

build/tsan/obj/%.o: %.cc
	@mkdir -p $(@D)
	$(SAN_CXX) $(TSAN_SAN) $(SAN_CXXFLAGS) -c $< -o $@

-include $(shell find build/asan/obj build/tsan/obj -name '*.d' 2>/dev/null)

build/asan/_core$(SAN_EXT): $(call san_objs,asan,$(SAN_SOURCES))
	g++ -shared $(ASAN_SAN) $^ -o $@

build/tsan/_core$(SAN_EXT): $(call san_objs,tsan,$(SAN_SOURCES))
	g++ -shared $(TSAN_SAN) $^ -o $@

build/asan/%: build/asan/obj/tests/cpp/%.o $(call san_objs,asan,$(SAN_LIB_SRCS))
	g++ $(ASAN_SAN) $^ -o $@ -pthread

.PHONY: asan-build tsan-build fuzz-build test-sanitize test-tsan test-cpp fuzz fuzz-short

asan-build: $(STAMP)
	$(MAKE) -j$(SAN_JOBS) build/asan/_core$(SAN_EXT) build/asan/unit_engine build/asan/fuzz_ioctl
	tools/sanitize/link-pkg.sh asan

tsan-build: $(STAMP)
	$(MAKE) -j$(SAN_JOBS) build/tsan/_core$(SAN_EXT)
	tools/sanitize/link-pkg.sh tsan

# The C++ unit-level run with LeakSanitizer on.
test-cpp: asan-build
	$(CPP_ASAN_ENV) build/asan/unit_engine

# The host suite against the ASan+UBSan extension (tests marked not_under_sanitizer skip).
test-sanitize: test-cpp
	$(ASAN_ENV) LD_PRELOAD="$(ASAN_RT)" PYTHONPATH=build/asan/pkg $(PY) $(SAN_PYTEST) tests

# The threaded tests against the TSan extension (see tools/sanitize/README.md for limits).
# (The pattern is a variable: inside $(shell ...) make would count its "(".)
TSAN_GREP  := threads?=|Thread\(|ThreadPool
TSAN_TESTS ?= $(shell grep -rlE '$(TSAN_GREP)' tests --include='test_*.py' | grep -v '^tests/vm/')
test-tsan: tsan-build
	$(TSAN_ENV) LD_PRELOAD="$(TSAN_RT)" PYTHONPATH=build/tsan/pkg $(PY) $(SAN_PYTEST) $(TSAN_TESTS)

# The ioctl fuzzer for FUZZ_SECONDS, then the hypothesis properties (the test files that use
# hypothesis) with random seeds and FASTMAP_FUZZ_FACTOR (5) times the examples, on the
# normal build. FUZZ_SEED=N replays a fuzzer run.
HYPOTHESIS_TESTS ?= $(shell grep -rl "^from hypothesis" tests --include='test_*.py' | grep -v '^tests/vm/')
FASTMAP_FUZZ_FACTOR ?= 5
export FASTMAP_FUZZ_FACTOR
fuzz: $(STAMP) fuzz-build
	$(CPP_ASAN_ENV) build/asan/fuzz_ioctl --seconds $(FUZZ_SECONDS) --threads $(FUZZ_THREADS) $(FUZZ_ARGS)
	HYPOTHESIS_PROFILE=fuzz $(PY) $(SAN_PYTEST) $(HYPOTHESIS_TESTS)

fuzz-build: $(STAMP)
	$(MAKE) -j$(SAN_JOBS) build/asan/fuzz_ioctl

# CI's short run: a minute of the fuzzer, one thread then several.
fuzz-short: fuzz-build
	$(CPP_ASAN_ENV) build/asan/fuzz_ioctl --seconds 20 --threads 1 $(FUZZ_ARGS)
	$(CPP_ASAN_ENV) build/asan/fuzz_ioctl --seconds 40 --threads 2 $(FUZZ_ARGS)
