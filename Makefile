# Two commands: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
# Where a CPU-only machine gets a CPU build of torch when none is on disk.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

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
# on machines with an NVIDIA driver, else a CPU build: never CUDA wheels on a CPU machine.
PIP := $(BIN)/python -m pip install -q
$(VENV)/.torch: $(BIN)/activate
	@$(BIN)/python -c "import torch" 2>/dev/null \
	|| { $(PIP) --no-index --no-deps "$(TORCH)" 2>/dev/null && $(PIP) "$(TORCH)"; } \
	|| { command -v nvidia-smi >/dev/null && $(PIP) "$(TORCH)"; } \
	|| $(PIP) "$(TORCH)" --index-url $(TORCH_CPU_INDEX) --extra-index-url https://pypi.org/simple
	@touch $@

$(VENV)/.deps: $(VENV)/.torch pyproject.toml
	$(BIN)/python -m pip install -q -e ".[test,demo]"
	@touch $@

demo: $(VENV)/.deps
	$(BIN)/python -m alice demo

test: $(VENV)/.deps
	$(BIN)/python -m pytest -q

bench: $(VENV)/.deps
	$(BIN)/python benchmarks/optimizer_only.py --device cpu --optimizer adam,foreach=True --optimizer alice

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
