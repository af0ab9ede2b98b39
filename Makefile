# Three commands a newcomer needs: `make demo`, `make test` and `make shell`.
# Each creates .venv with the project and its dependencies on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test shell bench clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	MPLBACKEND=Agg $(BIN)/txm-live demo --output demo-output

# The viewer tests drive Debian's Chromium (Playwright cannot download a browser here).
# As root (CI: .ci/run) it is installed and checked; any failure stops make. Otherwise a
# clear message; `make test` still runs everything, and the viewer tests fail naming this.
browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "make browser: Chromium is missing; as root run 'make browser' (or 'apt-get install -y chromium')" >&2; exit 1; fi; \
	  echo "make browser: installing Debian's chromium (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
	    || { echo "make browser: apt-get could not install chromium" >&2; exit 1; }; \
	fi; \
	chromium --headless --no-sandbox --disable-gpu --version \
	  || { echo "make browser: chromium is installed but does not start" >&2; exit 1; }

# Two pytest workers (pytest-xdist), a test file at a time each: the suite waits on servers,
# IOCs and RunEngines as much as it computes, so two cores finish it in about half the time.
test: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || $(MAKE) --no-print-directory browser
	MPLBACKEND=Agg $(BIN)/python -m pytest -n 2 --dist loadfile

# The IPython profile on the simulated beamline (embedded Tiled, live analysis). Data go
# to DATA (default: a fresh temporary folder); IPYTHON_ARGS are passed to ipython.
DATA ?=
IPYTHON_ARGS ?=
shell: $(STAMP)
	@data="$(DATA)"; [ -n "$$data" ] || data=$$(mktemp -d -t txm-live-XXXXXX); \
	echo "txm-live shell: data in $$data (make shell DATA=folder keeps them elsewhere)"; \
	TXM_LIVE_DATA="$$data" TXM_LIVE_DEVICES=$${TXM_LIVE_DEVICES:-sim} $(BIN)/ipython --profile-dir=profile_collection $(IPYTHON_ARGS)

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'  # the peers measured side by side
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache test-output
