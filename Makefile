# banyan: `make demo` and `make test` work on a fresh clone (they build .venv first).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= hf,rl,optim8bit,dev
QUICK ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo demo-reasoning test test-all clean gpu-check gpu-wheels

install: $(STAMP)

# torch first and pinned (an unpinned torch resolves to a multi-GB CUDA build), then the package
# under constraints.txt with torch pinned to the version just installed, so nothing replaces it.
# A GPU user picks another build with e.g.
#   make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	grep -v '^torch==' constraints.txt > $(VENV)/constraints.txt
	$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" >> $(VENV)/constraints.txt
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e ".[$(EXTRAS)]"
	$(PY) -c "import torch; print('torch', torch.__version__)"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m banyan.demo $(if $(QUICK),--quick,)

demo-reasoning: $(STAMP)
	$(PY) -m banyan.demo_reasoning $(if $(QUICK),--quick,)

test: $(STAMP)
	$(PY) -m pytest -q -x --durations=15

test-all: $(STAMP)
	$(PY) -m pytest -q -m "" 

# One command on a machine with an NVIDIA GPU (after `make test`): GPU tests, bench train vs HF transformers,
# plan --calibrate/--validate and bench comm, each time-capped, in under 8 minutes; results in $$OUT or
# ./gpu-check (gpu-check.md, .json, .log). Uses the torch it finds (the venv's if there is one, else python3).
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	PYTHON=$(GPU_PY) bash scripts/gpu_check.sh

# Wheels a bare CUDA image lacks, for machines without network: carried in .whl/ (git-ignored).
GPU_WHEELS ?= tyro==1.0.17 docstring-parser==0.18.0 typeguard==4.6.1 tomli-w==1.2.0 torchao==0.18.0 bitsandbytes==0.50.2
GPU_PYVER ?= 3.12
gpu-wheels:
	python3 -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PYVER) --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 --platform any -d .whl $(GPU_WHEELS)

clean:
	rm -rf $(VENV) runs data build *.egg-info gpu-check
