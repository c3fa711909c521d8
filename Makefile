# beltcrack-jax — the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
WORKDIR ?= workdirs/demo
# extra flags for both demo commands, e.g. --config.data.name=beltcrack/synthetic_demo_seed7 (a fresh draw)
DEMO_FLAGS ?=
PYTEST_ARGS ?=

.PHONY: install demo test test-slow clean

# The runtime install (enough for the demo); the test extras (pytest, pywavelets, tensorboard) on top of it.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed-test

# Trains the full network from scratch on the embedded synthetic `demo` data (CPU, a few minutes; the periodic
# val evaluation keeps the best checkpoint), then scores that checkpoint on the test split (belts it never saw):
# prints mAP50 / P / R / F1 and where the metrics and plots were written.
# glibc keeps XLA:CPU's large temporaries mapped between calls (~20 % faster on CPU, see BENCHMARKS.md).
demo: export MALLOC_MMAP_THRESHOLD_ = 4294967296
demo: export MALLOC_TRIM_THRESHOLD_ = 17179869184
# a persistent XLA cache: evaluate.py reuses the predict step the training's val evaluation compiled
demo: export JAX_COMPILATION_CACHE_DIR = $(CURDIR)/$(WORKDIR)/xla_cache
demo: export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS = 2
demo: $(VENV)/.installed
	$(PY) train.py --config configs/demo.py --workdir $(WORKDIR) $(DEMO_FLAGS)
	$(PY) evaluate.py --config configs/demo.py --workdir $(WORKDIR) --step best --output_dir $(WORKDIR)/eval $(DEMO_FLAGS)

# The test suite (4 simulated CPU devices). Slow cases run in their cheap form; `make test-slow` runs them in full.
test: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 -m "not slow" $(PYTEST_ARGS)

test-slow: $(VENV)/.installed-test
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) workdirs .pytest_cache
