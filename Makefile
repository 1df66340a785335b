# dcr-sidecar — the two commands a newcomer needs:
#   make demo   the sidecar in front of a local, real OIDC provider, with a demo app to click through
#   make test   ruff, mypy --strict and the whole test suite
# Everything is installed by these targets (a venv from pyproject + the lock file, npm ci for the
# test provider); nothing needs to be on the machine but python3 (>= 3.11) and node (>= 20).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := tests/oidc/node_modules/.installed

.PHONY: install lint typecheck test demo bench clean

$(STAMP): pyproject.toml requirements-dev.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c requirements-dev.lock -e '.[dev]'
	@touch $@

$(NODE_STAMP): tests/oidc/package-lock.json
	cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

install: $(STAMP) $(NODE_STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check dcr_sidecar tests

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict dcr_sidecar tests

test: install lint typecheck
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

demo: install
	@scripts/demo.sh

clean:
	rm -rf $(VENV) tests/oidc/node_modules .dcr-sidecar .mypy_cache .ruff_cache
