# One command sets up and runs the pipeline (`make repro`), one sets up and runs the tests
# (`make test`). Everything installs into .venv from requirements.lock (exact pins).
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 5000
PYTEST_ARGS ?=

# dvc.yaml's commands run `imgclf ...`: the venv's bin first on PATH finds it, also for DVC.
export PATH := $(BIN):$(PATH)
# imgclf keeps TensorFlow's start-up chatter off the console (imgclf/console.py);
# `make repro IMGCLF_VERBOSE=1` shows every library line.
IMGCLF_VERBOSE ?= 0
export IMGCLF_VERBOSE

.PHONY: setup repro test test-slow test-isa test-all ui compare params lint sweep bench bench-scale clean help browser

help:
	@echo "make repro   set up .venv, dvc pull the data, dvc repro the pipeline, show metrics"
	@echo "make test    set up .venv, make lint, unit + integration tests (CI=true: + slow)"
	@echo "make test-all  the same plus the slow group (real data, fresh clone, team stack, UI)"
	@echo "             and the numerics tests under each oneDNN instruction set the CPU reaches"
	@echo "make test-isa  only the numerics tests under each oneDNN instruction-set cap (tests/isa.py)"
	@echo "make ui      MLflow UI over the project's store: prints and opens the training runs view"
	@echo "make compare dvc exp show, the deciding metrics and main params only (COMPARE_ARGS=...)"
	@echo "make params  recompose params.yaml from conf/ (Hydra)"
	@echo "make sweep   Optuna sweep (conf/sweep/\$$(SWEEP).yaml), SWEEP_ARGS for overrides"
	@echo "make lint    ruff (lint + format), mypy on src/, import-linter's layering contracts"
	@echo "make bench   measure accuracy (3 seeds), repro time, throughput; write BENCHMARKS.md"
	@echo "             (BENCH_ARGS=--cv-repeats=3: the CV rows over 3 training seeds, 3x their cost)"
	@echo "make bench-scale  each stage at 1k and 10k synthetic images: time, images/s, peak RSS"
	@echo "             (BENCH_SCALE_SIZES=1000,10000,100000:ingest; BENCH_SCALE_ARGS=\"--json"
	@echo "             benchmarks.json --markdown BENCHMARKS.md\" records it)"

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv>=0.5,<1"
	@# --compile-bytecode: where PYTHONDONTWRITEBYTECODE is set, nothing ever writes .pyc files and
	@# every command recompiles DVC, MLflow and TensorFlow from source (2.5 s of a 5 s no-op repro)
	$(BIN)/uv pip install --python $(BIN)/python --quiet --compile-bytecode -r requirements.lock
	@# compat: a plain path .pth, so Hydra finds the hydra_plugins namespace package (the
	@# import-hook editable finder hides namespace packages from its plugin scan)
	$(BIN)/uv pip install --python $(BIN)/python --quiet --no-deps -e . --config-setting editable_mode=compat
	@touch $@

repro: $(STAMP)
	$(BIN)/dvc pull data.dvc
	@# On failure, say whether a killed run left a stale lock and how to recover.
	$(BIN)/dvc repro || { $(BIN)/imgclf doctor; exit 1; }
	@$(BIN)/imgclf summary

# `make test`: the lint (ruff, mypy, the layering contracts), then the unit and integration
# groups on both cores (about 5 minutes on 2 cores). CI (CI=true) and `make test-all` add the
# slow group: the real data, a fresh clone, the team stack, the MLflow UI in Chromium and every
# model family at the sweeps' edges (another ~6 minutes); then test-isa: the `numerics` tests
# again under each oneDNN instruction-set cap below the CPU's own, one run per distinct set of
# kernels (about 1.5 minutes each; it ends with a table of the levels covered).
PYTEST := $(BIN)/python -m pytest -n 2 --dist loadscope
test: lint
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)
	@if [ "$$CI" = true ]; then $(MAKE) --no-print-directory test-slow test-isa; fi

test-slow: $(STAMP) browser
	$(PYTEST) -m slow $(PYTEST_ARGS)

test-isa: $(STAMP)
	$(BIN)/python -m tests.isa

test-all: lint
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-slow test-isa

# The MLflow UI test drives a real headless Chromium. Installed from the system packages when
# missing and we may (root with apt-get, as in CI); elsewhere that test skips, saying how.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	       && { apt-get update -qq && apt-get install -y -qq chromium >/dev/null \
	            || echo "chromium could not be installed: the MLflow UI test will skip"; }; } \
	  || echo "no chromium (apt-get install chromium, as root): the MLflow UI test will skip"

ui: $(STAMP)
	@$(BIN)/imgclf ui --host $(HOST) --port $(PORT)

# The everyday comparison of DVC experiments: the deciding metrics and the main knobs only.
COMPARE_KEEP ?= ^(Experiment|Created|accuracy|leakfree_accuracy|macro_f1|epochs_run|train\.epochs|model\.name|optimizer\.name)$$
compare: $(STAMP)
	@COLUMNS=160 $(BIN)/dvc exp show --no-pager --hide-queued --drop '.*' --keep '$(COMPARE_KEEP)' $(COMPARE_ARGS)

params: $(STAMP)
	$(BIN)/imgclf params

SWEEP ?= cnn
SWEEP_ARGS ?=
sweep: $(STAMP)
	$(BIN)/dvc pull data.dvc
	$(BIN)/dvc repro preprocess
	$(BIN)/imgclf-train -m hydra/sweeper=imgclf_optuna sweep=$(SWEEP) $(SWEEP_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/mypy src
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/dvc pull --quiet data.dvc
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)

# Stages at dataset sizes the real data never reaches, on synthetic cards (imgclf synth); prints
# a table and writes nothing unless BENCH_SCALE_ARGS says where (scripts/bench_scale.py).
BENCH_SCALE_SIZES ?= 1000,10000
BENCH_SCALE_ARGS ?=
bench-scale: $(STAMP)
	$(BIN)/python scripts/bench_scale.py --sizes $(BENCH_SCALE_SIZES) $(BENCH_SCALE_ARGS)

clean:
	rm -rf artifacts .pytest_cache
