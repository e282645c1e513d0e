# banyan: `make demo` and `make test` work on a fresh clone (they build .venv first).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= hf,rl,optim8bit,dev
QUICK ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo demo-reasoning test test-all clean

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

clean:
	rm -rf $(VENV) runs data build *.egg-info
