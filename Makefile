# Two commands a newcomer needs: `make demo` and `make test`.
# Both create .venv with the project and its dependencies on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean browser

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

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache test-output
