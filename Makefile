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

# torch: keep an existing one; else the pinned release, from a wheel on disk
# if there is one, else a CPU build on machines without an NVIDIA driver.
$(VENV)/.torch: $(BIN)/activate
	@$(BIN)/python -c "import torch" 2>/dev/null \
	|| $(BIN)/python -m pip install -q --no-index "$(TORCH)" 2>/dev/null \
	|| { command -v nvidia-smi >/dev/null && $(BIN)/python -m pip install -q "$(TORCH)"; } \
	|| $(BIN)/python -m pip install -q "$(TORCH)" --index-url $(TORCH_CPU_INDEX)
	@touch $@

$(VENV)/.deps: $(VENV)/.torch pyproject.toml
	$(BIN)/python -m pip install -q -e ".[test,demo]"
	@touch $@

demo: $(VENV)/.deps
	$(BIN)/python -m alice demo

test: $(VENV)/.deps
	$(BIN)/python -m pytest -q

bench: $(VENV)/.deps
	$(BIN)/python benchmarks/cpu_overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
