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

# The viewer tests drive Debian's Chromium (Playwright cannot download a browser here):
# installed when we are root, otherwise a clear failure -- never a silent skip.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "the viewer tests need Chromium: run 'sudo apt-get install -y chromium' (or make browser as root)" >&2; exit 1; fi; }

test: $(STAMP) browser
	MPLBACKEND=Agg $(BIN)/python -m pytest

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
