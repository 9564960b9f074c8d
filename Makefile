# Two commands on a fresh machine: `make demo` and `make test`.
# The torch pair is pinned here (not in pyproject.toml) so a fresh install is
# reproducible; override with e.g. `make test TORCH_SPEC="torch torchvision"`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean-runs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[dev,postgres,onnx,dashboard]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/resnext-nas search experiments/quickstart.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

lint: $(STAMP)
	$(BIN)/ruff check space search tests benchmarks

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

clean-runs:
	rm -rf mlruns/*
