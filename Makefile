# Two commands: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
# PyTorch's CPU-only wheel index, for a machine with neither torch nor an NVIDIA driver
# (README, Quick start). Empty: pip's own configured indexes must offer the +cpu build.
TORCH_CPU_INDEX ?=

.PHONY: demo test bench clean

$(BIN)/activate:
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
		echo "Using the torch already installed for $(PYTHON)"; \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV); \
	fi

# torch: keep an existing one; else the pinned release from a wheel on disk
# (pip's find-links; its dependencies then from the index), else from the index
# on machines with an NVIDIA driver, else the +cpu build (a local version that only CPU
# indexes carry): never CUDA wheels on a CPU machine.
PIP := $(BIN)/python -m pip install -q
$(VENV)/.torch: $(BIN)/activate
	@$(BIN)/python -c "import torch" 2>/dev/null \
	|| { $(PIP) --no-index --no-deps "$(TORCH)" 2>/dev/null && $(PIP) "$(TORCH)"; } \
	|| { command -v nvidia-smi >/dev/null && $(PIP) "$(TORCH)"; } \
	|| $(PIP) "$(TORCH)+cpu" $(if $(TORCH_CPU_INDEX),--extra-index-url $(TORCH_CPU_INDEX)) \
	|| { echo "No CPU build of $(TORCH): set TORCH_CPU_INDEX (see README, Quick start)"; exit 1; }
	@touch $@

# One stamp per extra, so `make demo` installs only what the demo needs (the demo extra:
# no scikit-learn, which only the digits and breast-cancer tasks use), `make bench` the
# compare extra and `make test` the test extra (pytest, hypothesis and the optional
# frameworks the suite exercises; tests of a framework that is missing skip).
$(VENV)/.deps-demo: $(VENV)/.torch pyproject.toml
	$(BIN)/python -m pip install -q -e ".[demo]"
	@touch $@

$(VENV)/.deps-compare: $(VENV)/.torch pyproject.toml
	$(BIN)/python -m pip install -q -e ".[compare]"
	@touch $@

$(VENV)/.deps-test: $(VENV)/.torch pyproject.toml
	$(BIN)/python -m pip install -q -e ".[test]"
	@touch $@

# The README's small comparison: mnist-mlp, Alice vs Adam, 2 seeds (README, Quick start: measured time).
demo: $(VENV)/.deps-demo
	$(BIN)/python -m alice demo

test: $(VENV)/.deps-test
	$(BIN)/python -m pytest -q

# Adam vs Alice only: the compare extra is enough.
bench: $(VENV)/.deps-compare
	$(BIN)/python benchmarks/optimizer_only.py --device cpu --optimizer adam,foreach=True --optimizer alice

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
