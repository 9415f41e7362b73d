# lacrima: one venv, pinned dependencies from requirements.lock, no global state.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME ?= $(CURDIR)/.prefect
export MPLBACKEND := Agg

.PHONY: install demo test test-fast bench lock expectations clean system-deps portal

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv==0.13.9
	# --compile-bytecode: every flow run is a fresh process, and where PYTHONDONTWRITEBYTECODE
	# is set nothing is cached: without .pyc files, importing great_expectations takes ~7 s
	# instead of ~3.4 s and prefect + lacrima ~3.6 s instead of ~1.8 s (measured 2026-11-22).
	$(UV) pip sync -q --compile-bytecode --python $(PY) requirements.lock
	$(UV) pip install -q --python $(PY) --no-deps -e .
	touch $@

install: $(VENV)/.installed

## demo: synthetic drops for every site into the local landing zone, then one pipeline run
demo: install
	$(VENV)/bin/lacrima demo

## portal: the site portal on the demo store (./data, made by `lacrima demo` when missing), with
## a one-time sign-in link for a demo data manager of each site and for a coordinator
PORTAL_PORT ?= 8000
portal: install
	test -f data/reports/latest.json || $(VENV)/bin/lacrima demo
	@echo "Sign-in links (each works once, for 7 days):"
	@for s in $$($(PY) -c "from lacrima.study import site_codes; print(*site_codes())"); do \
	  printf '  data manager of %s: ' $$s; \
	  $(VENV)/bin/lacrima portal invite demo.$$s@example.org --site $$s --storage data \
	    --public-url http://127.0.0.1:$(PORTAL_PORT); done
	@printf '  coordinator: '; $(VENV)/bin/lacrima portal invite demo.coordinator@example.org \
	  --role coordinator --storage data --public-url http://127.0.0.1:$(PORTAL_PORT)
	$(VENV)/bin/lacrima portal serve --storage data --demo --port $(PORTAL_PORT)

## system-deps: Debian packages the tests use (headless Chromium for the report test)
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium chromium-driver >/dev/null; fi; }

## test: the whole test suite and the docstrings' examples (CI runs this), on two workers:
## a file's tests run on one worker; each worker has its own PREFECT_HOME (tests/conftest.py)
## and every server, browser and cluster listens on a port the OS picks
test: install system-deps
	$(PY) -m pytest -q -n 2 --dist loadfile

## test-fast: the edit-test loop: no Prefect server, moto S3 server, browser, Dask cluster or
## child process (each imports Great Expectations, pandas or Prefect anew: seconds apiece)
FAST := not prefect and not s3 and not browser and not dask and not slow and not process
test-fast: install
	$(PY) -m pytest -q -n 2 --dist loadfile -m "$(FAST)"

## bench: the commands a user types, timed against the independent floor (../shared/bench/floor.py)
## and lacrima's own kernels (bench.bare); writes bench/results.md
## (not part of test; about an hour, 35 min of it Dask; `make bench BENCH_ARGS=--quick` runs every scenario tiny)
bench: install
	$(PY) -m bench $(BENCH_ARGS)

## lock: re-resolve requirements.in into requirements.lock
lock:
	$(UV) pip compile requirements.in --python-version 3.11 -o requirements.lock

## expectations: regenerate the Great Expectations suites from the codebooks
expectations: install
	$(VENV)/bin/lacrima expectations --write

clean:
	rm -rf $(VENV) .prefect data
