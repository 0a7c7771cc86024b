# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo demo-2stage test test-fast clean

install: $(STAMP)

# torch first, pinned: it takes the CPU wheel already on these machines instead of CUDA packages.
# timm needs torchvision; PyPI's matching release is installed without its dependencies, so it
# cannot replace the CPU torch with a CUDA one (models/timm_loader.py explains the rest).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --no-deps torchvision==0.28.0
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: install
	$(VENV)/bin/raylift train --config configs/demo.yaml

# The two-stage system on embedded synthetic images: MPSTR images -> 2D, predicted 2D for every
# frame and camera, PoseFormer on it and on the GT 2D, each stage beside its mean pose (~10 min).
demo-2stage: install
	$(VENV)/bin/raylift two-stage --config configs/two_stage_synthetic.yaml

test: install
	$(VENV)/bin/python -m pytest -q --durations=15 tests

test-fast: install
	$(VENV)/bin/python -m pytest -q -m "not slow" tests

clean:
	rm -rf $(VENV) runs data/datasets data/synthetic .pytest_cache
