# `make test` is the test command of the README and of .ci/run: it installs what the tests need (Debian's prometheus,
# prometheus-alertmanager, postgresql and chromium, which renders the HTML report; the Python test extras), then runs them.
# Python packages go into a virtual environment of the project's own (.venv): a Debian/Ubuntu system Python refuses
# pip outside one (PEP 668), so the same steps work on a developer's machine and in CI.
SHELL := /bin/bash
VENV ?= .venv
PYTHON := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test deps system-deps python-deps demo golden snapshot audit loop

test: deps
	$(PYTHON) -m pytest -ra

deps: system-deps python-deps

system-deps:
	@if ! command -v promtool >/dev/null || ! command -v prometheus-alertmanager >/dev/null || ! command -v amtool >/dev/null \
	    || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	    || ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  $(SUDO) apt-get update && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends \
	    prometheus prometheus-alertmanager postgresql chromium chromium-driver; \
	fi

$(PYTHON):
	python3 -m venv $(VENV)

python-deps: $(PYTHON)
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(PYTHON) -m pip install --quiet -e '.[test]'

# The README's first command: a virtual environment, since a Debian/Ubuntu system Python refuses pip outside one.
demo:
	python3 -m venv .venv && .venv/bin/pip install --quiet -e . && .venv/bin/rules-engine evaluate --rules rules/ --snapshot snapshots/demo.snapshot

# Regenerate what is generated and committed: golden files, shipped dashboards and Alertmanager fragment.
golden: python-deps
	UPDATE_GOLDEN=1 $(PYTHON) -m pytest -q tests/test_compile_golden.py
	$(PYTHON) scripts/regenerate_shipped.py

# Re-record the shipped demo snapshot (simulate, backfill, record); needed when a shipped rule's query changes.
snapshot: python-deps
	$(PYTHON) scripts/make_demo_snapshot.py

# Dependency audit alone (pip-audit against PyPI's advisory data; `make test` runs it too; without the network it
# skips with the reason). SECURITY.md has the result.
audit: python-deps
	$(PYTHON) -m pytest -q -rs tests/test_dependency_audit.py

# The whole loop on loopback ports without Docker (README "The loop without Docker"): a live simulated fleet,
# Prometheus, Alertmanager, a person's receiver, serve and monitor. Ctrl-C stops everything. LOOP_ARGS passes options.
loop: deps
	$(PYTHON) scripts/loop.py $(LOOP_ARGS)
