# fastmap developer entry points. On a fresh machine:
#   make demo   # builds fastmap into .venv and runs the demo on the simulated kernel
#   make demo-qemu  # QEMU 10 with the simulated edu passed through: guest DMA, interrupts, live migration
#   make test   # builds, lints, runs the test suites (simulator, then a real kernel in a VM)
#   make test-sanitize / test-tsan / test-cpp / fuzz / fuzz-short: tools/sanitize/README.md
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo-qemu demo test test-sim test-vm lint bench install clean selftests selftests-real

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall when the build inputs change (C++ sources, build files).
$(STAMP): $(PY) pyproject.toml setup.py $(shell find csrc -name '*.cc' -o -name '*.h')
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fastmap demo

# Unmodified QEMU (TCG) on the simulated kernel: vfio-pci passthrough of the simulated edu
# device over IOMMUFD and over the legacy container, guest DMA checked, then live migration
# to a second QEMU while the device keeps writing guest memory (tools/qemu_demo).
demo-qemu: $(STAMP)
	tools/vmtest/install-qemu.sh
	tools/vmtest/kernel.sh >/dev/null
	$(PY) tools/qemu_demo/run.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples tools
	$(VENV)/bin/ruff format --check src tests benchmarks examples tools
	$(VENV)/bin/mypy
	$(PY) tools/check_includes.py
	$(PY) tools/check_bindings.py

# The simulator tier: everything that runs without /dev/iommu. The uAPI header check
# (tests/test_uapi_headers.py) needs the 6.12 headers: fetching them must not fail quietly.
test-sim: $(STAMP)
	tools/kernel-headers.sh >/dev/null
	$(PY) -m pytest -m "not vm"

# Linux's iommufd selftests under `fastmap sim-run`, compared test by test with the real
# 6.12 kernel's recorded outcomes (tests/selftests/real_6.12.95.json; part of test-sim too).
selftests: $(STAMP)
	tools/selftests/build.sh >/dev/null
	$(PY) -m pytest -q tests/selftests

# Re-record the real kernel's selftest outcomes in the VM (on a shared machine, run it
# under the VM lock: flock /work/vm.lock make selftests-real).
selftests-real: $(STAMP)
	tools/selftests/record-real.sh

# The real-kernel tier: boots Linux 6.12 under QEMU and runs the suites there.
test-vm: $(STAMP)
	tools/vmtest/install-qemu.sh
	tools/vmtest/kernel.sh >/dev/null
	$(PY) -m pytest -m vm -s

test: lint test-sim test-vm

bench: $(STAMP)
	$(VENV)/bin/fastmap bench all

clean:
	rm -rf build $(VENV) src/fastmap/*.so

include tools/sanitize/sanitize.mk
