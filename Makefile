# The README's two commands, `make run` and `make test`, do all set-up on a fresh machine:
# a virtualenv with the package and its dev extras, the dataset, and (for the tests) the
# real PostgreSQL, Chromium and docker-compose from Debian's packages.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# make run's workers: on 2 cores one worker of 2 threads ends a trial sooner than each of two
# workers of 1 thread. The best trial's kept model is tested as trained (--from-weights: the
# model a retraining would reproduce), so the time after the search is a minute on any machine.
WORKERS ?= 1
STUDY ?= studies/quick.toml
# make bench: the parts to run, minutes of wall clock per run of part 1 on Fashion-MNIST and
# on the digits, seeds per contestant, more flags (python -m benchmarks.bench --help), e.g.
# PARTS=overhead,storage,cores or BENCH_ARGS="--contestants search,centre,kerastuner".
PARTS ?= efficiency,digits
BUDGET_MINUTES ?= 20
DIGITS_BUDGET_MINUTES ?= 3
SEEDS ?= 3
BENCH_ARGS ?=

# Install Debian packages that are missing, where apt and root are available.
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing$$missing (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else echo "not installed:$$missing (needs apt-get as root); $(2)"; fi
endef

.PHONY: run test setup data test-deps bench bench-deps lcbench lcbench-deps dashboard lint clean

run: setup data
	$(BIN)/search run $(STUDY) --workers $(WORKERS)
	@name=$$($(BIN)/python -c 'import sys; from search.config import load_config; \
	  print(load_config(sys.argv[1]).name)' $(STUDY)) && \
	$(BIN)/search export $$name --weights && \
	$(BIN)/search retrain runs/$$name/best.json --from-weights && \
	$(BIN)/search report $$name

# make test PYTEST_ARGS="-n 4 -k dashboard": pytest-xdist's worker count and more (pyproject.toml).
PYTEST_ARGS ?=

test: setup data test-deps
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

setup: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# Fashion-MNIST's IDX files from Debian; without apt, Keras downloads them on first use.
data:
	$(call apt_install,dataset-fashion-mnist,Keras will download Fashion-MNIST)

test-deps:
	$(call apt_install,postgresql chromium docker-compose jq munge slurmctld slurmd slurm-client,the tests that need them fail or skip)

# The benchmarks of benchmarks/bench.py (benchmarks/README.md); they need the machine alone.
# The default, part 1 on Fashion-MNIST and on the digits, 3 seeds x 2 contestants, takes about
# 2 h 50 min on 2 cores. It resumes: a rerun skips the runs whose records exist.
# Results: benchmarks/results/.
bench: setup data bench-deps
	$(BIN)/python -m benchmarks.bench --parts $(PARTS) --budget-minutes $(BUDGET_MINUTES) \
	  --digits-budget-minutes $(DIGITS_BUDGET_MINUTES) --seeds $(SEEDS) $(BENCH_ARGS)

bench-deps: $(BIN)/.installed-bench
	$(call apt_install,postgresql,the PostgreSQL storage benchmark is skipped)

$(BIN)/.installed-bench: pyproject.toml $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $@

# The search strategy on LCBench's surrogate in simulated time (benchmarks/README.md): all
# 34 tasks, 10 seeds, 4 simulated workers, budgets of 1-100 full trials, on 2 processes.
# It resumes: a rerun skips the runs recorded in benchmarks/results/lcbench.runs.jsonl.gz.
LCBENCH_ARGS ?=

lcbench: bench-deps lcbench-deps
	$(BIN)/python -m benchmarks.lcbench $(LCBENCH_ARGS)

# DEHB, a contestant, pins numpy<2, which TensorFlow's numpy 2 excludes: its own virtualenv.
lcbench-deps: .venv-dehb/.installed

.venv-dehb/.installed:
	$(PYTHON) -m venv .venv-dehb
	.venv-dehb/bin/python -m pip install --quiet 'dehb==0.1.2' 'onnxruntime>=1.17'
	touch $@

dashboard: setup
	$(BIN)/search dashboard

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .venv-dehb runs
