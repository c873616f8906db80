# Two entry points for a fresh machine: `make demo` and `make test`.
# Python 3.11 where there is one, else any python3 >= 3.10 (checked before the venv is made).
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null || echo python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench gpu-check cross-check clean

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null || \
		{ echo "nvc-train: error: needs Python >= 3.10; found $$($(PYTHON) --version 2>&1) at $(PYTHON) (set PYTHON=...)" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Reinstall when the dependency list changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/nvc-train demo

# Two pytest-xdist workers: one test module (all of tests/slurm) at a time each, so that one
# worker fills the other's waits (Slurm timers, subprocess start-up). TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow"

# Every GPU check and figure in one command (needs CUDA; 6.5 minutes on an H100, 2026-11-27,
# before the GEMM-path timings were added: allow about 10).
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py

# The same streams decoded in every environment this machine can reach (CPU kernel levels, one
# thread, oneDNN off, PyTorch 2.4.1 in its own venv, aarch64 under qemu-user, CUDA): one line each.
# The aarch64 row needs qemu-user-static, debootstrap and g++-aarch64-linux-gnu: installed here with
# apt-get when missing and run as root, else the row says what to install. Set-up is cached under
# ~/.cache/nvc-train/cross-check. CROSS_CHECK_ARGS: checkpoints and options (`nvc-train cross-check -h`).
CROSS_CHECK_ARGS ?=
cross-check: $(STAMP)
	@command -v qemu-aarch64-static >/dev/null && command -v debootstrap >/dev/null && \
		command -v aarch64-linux-gnu-g++ >/dev/null || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		  echo "cross-check: apt-get install qemu-user-static debootstrap g++-aarch64-linux-gnu" && \
		  apt-get update -qq && apt-get install -y -qq qemu-user-static debootstrap g++-aarch64-linux-gnu >/dev/null; } || true
	$(VENV)/bin/nvc-train cross-check $(CROSS_CHECK_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/train_step.py

clean:
	rm -rf runs .pytest_cache
