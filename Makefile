# anomaly-zoo — every target creates the virtual environment first if it is missing.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# No model hub, no online wandb: tests and the demo never request weights.
export HF_HUB_OFFLINE = 1
export WANDB_MODE = offline
export PYTHONDONTWRITEBYTECODE = 1

.PHONY: install demo test test-all lint benchmark clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: install  ## train + test every model's demo config on the synthetic data, one side-by-side table (MODEL=uniad: one)
	$(PY) -m benchmarks.suite.demo $(if $(MODEL),--model $(MODEL)) --threads $(or $(THREADS),1)

test: install  ## the test suite (slow end-to-end runs excluded; `make test-all` includes them)
	$(PY) -m pytest -q -m "not slow"

test-all: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check anomaly_zoo tests benchmarks

benchmark: install  ## the suite of benchmarks/suite.yaml -> benchmarks/results/ (ONLY='synthetic/*', FORCE=1; THREADS=0: torch's default)
	$(PY) -m benchmarks $(if $(ONLY),--only '$(ONLY)') $(if $(FORCE),--force) --threads $(or $(THREADS),1)

clean:
	rm -rf results lightning_logs .pytest_cache .ruff_cache
