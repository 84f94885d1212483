# Two entry points for a fresh machine: `make demo` (install + the built-in default job) and
# `make test` (install + the offline test suite). Both create ./.venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision pinned to the build that installs offline on the project's machines; on a GPU
# machine the same pin pulls the CUDA build from PyPI. (aarch64: torch==2.9.1 torchvision==0.24.1)
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/cytotune demo

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo_runs .cytotune_cache cytotune_demo_sweep site
