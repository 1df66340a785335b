# dcr-sidecar — the two commands a newcomer needs:
#   make demo   the sidecar in front of a local, real OIDC provider, with a demo app to click through
#               (ports: PROVIDER_PORT=9400 SIDECAR_PORT=8080 MANAGEMENT_PORT=9090 DEMO_PORT=8000)
#   make test   ruff, mypy --strict and the whole test suite (with a real browser test)
#   make chaos  the chaos soak (tests/chaos.py, at most 5 minutes, loopback only): a fleet under
#               faults, its invariants printed as a table (a 60-s variant runs in `make test`)
#   make bench  the benchmark suite (bench/, minutes; never part of `make test`): results in
#               docs/benchmarks.md. BENCH_ARGS=--quick for a short check of the harness.
# These targets install the Python and npm dependencies (a venv from pyproject + the lock file,
# npm ci for the test provider). The machine needs: python3 (>= 3.11) with venv, node 22 LTS
# (20 works; the provider then warns "Unsupported runtime") and npm; for `make test` also
# redis-server and chromium (Debian packages; .ci/run installs whatever is missing).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := tests/oidc/node_modules/.installed
# The MCP conformance suites and the Node >= 22 they need (an npm package: no system install).
CONF_STAMP := tests/conformance/node_modules/.installed
CONFORMANCE_ARGS ?=
# The benchmarks get their own venv (with the bench and fast extras), so `make bench` never
# changes what `make test` runs with (the CLI picks uvloop up whenever it is installed).
BENCH_VENV ?= .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_ARGS ?=
# pytest-xdist workers for `make test`: the suite mostly waits on real processes (node, redis,
# `serve`) and timers, so three workers on two cores overlap the waits (measured: one process
# 518 s, -n 2 322 s, -n 3 275-283 s). PYTEST_WORKERS=0 runs it in one process (as `pytest
# tests/test_x.py` does).
PYTEST_WORKERS ?= 3

.PHONY: install lint typecheck test conformance demo bench clean

$(STAMP): pyproject.toml requirements-dev.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c requirements-dev.lock -e '.[dev]'
	@touch $@

$(NODE_STAMP): tests/oidc/package-lock.json
	cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(CONF_STAMP): tests/conformance/package-lock.json
	cd tests/conformance && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(BENCH_STAMP): pyproject.toml requirements-dev.lock requirements-bench.lock
	@test -x $(BENCH_PY) || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install -q --disable-pip-version-check -c requirements-dev.lock \
		-c requirements-bench.lock -e '.[bench,fast]'
	@touch $@

install: $(STAMP) $(NODE_STAMP) $(CONF_STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check dcr_sidecar tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict dcr_sidecar tests bench

test: install lint typecheck
	$(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

conformance: $(STAMP) $(CONF_STAMP)
	$(PY) tests/conformance/run.py $(CONFORMANCE_ARGS)

chaos: install
	$(PY) -m tests.chaos --duration 300

demo: install
	@scripts/demo.sh

bench: $(BENCH_STAMP) $(NODE_STAMP)
	bench/install-tools.sh
	$(BENCH_PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) tests/oidc/node_modules tests/conformance/node_modules .dcr-sidecar .mypy_cache .ruff_cache
