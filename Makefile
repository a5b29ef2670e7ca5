# The two commands of the README: `make run` and `make test`. Everything else supports them.
#   make run    serve-only install (no PyTorch), the committed demo model when $(MODELS) holds none, serve
#   make test   adds the training and development extras (PyTorch: the CPU build without an NVIDIA GPU)
VENV ?= .venv
PY := $(VENV)/bin/python
FSFM := $(VENV)/bin/fsfm
MODELS ?= models
HOST ?= 127.0.0.1
PORT ?= 8000
GRPC_PORT ?= 50051
# PyTorch for `make test`. On a machine without nvidia-smi, the CPU build: a local +cpu wheel in pip's
# find-links when there is one (TORCH_WHEEL=path overrides), else PyTorch's CPU index (TORCH_INDEX).
# With an NVIDIA GPU, pip's default (CUDA) build.
HAS_NVIDIA_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)
FIND_LINKS := $(shell python3 -m pip config get global.find-links 2>/dev/null) $(PIP_FIND_LINKS)
PY_TAG := $(shell python3 -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
TORCH_WHEEL ?= $(lastword $(sort $(wildcard $(addsuffix /torch-*+cpu-$(PY_TAG)-*.whl,$(FIND_LINKS)))))
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TRAIN_TORCH := "torch>=2.4,<=2.14.1"  # the train extra's torch (tests/test_deploy.py keeps them equal)

.PHONY: run test lint bench install clean

$(VENV)/.serve: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[serve]'
	touch $@

$(VENV)/.test: $(VENV)/.serve
ifeq ($(HAS_NVIDIA_GPU),)
ifneq ($(TORCH_WHEEL),)
	$(PY) -m pip install --quiet '$(TORCH_WHEEL)'
else
	$(PY) -m pip install --quiet --index-url $(TORCH_INDEX) $(TRAIN_TORCH)
endif
endif
	$(PY) -m pip install --quiet -e '.[serve,train,dev]'
ifeq ($(HAS_NVIDIA_GPU),)
	@if $(PY) -m pip list 2>/dev/null | grep -qi '^nvidia-'; then \
		echo "error: CUDA wheels (nvidia-*) were installed on a machine without an NVIDIA GPU" >&2; exit 1; fi
endif
	touch $@

install: $(VENV)/.test

# The committed demo model (demo/PROVENANCE.md) goes into $(MODELS) when it holds no model package.
run: $(VENV)/.serve
	@ls $(MODELS)/*/*/manifest.json >/dev/null 2>&1 || { mkdir -p $(MODELS) && cp -R demo/models/. $(MODELS)/ \
		&& echo "$(MODELS) held no model: copied the demo model (not fit for decisions; demo/PROVENANCE.md)"; }
	$(FSFM) serve --models $(MODELS) --host $(HOST) --port $(PORT) --grpc-port $(GRPC_PORT)

# Lint and format check (settings in pyproject.toml), then the suite.
lint: $(VENV)/.test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest -q

# Rewrites docs/performance.md (ViT-B/16 and ViT-S/16; about 10 minutes on 2 cores).
bench: $(VENV)/.test
	$(FSFM) bench report

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
