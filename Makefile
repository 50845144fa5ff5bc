# Two entry points, each doing its own set-up from a fresh clone:
#   make app   — the dashboard on the embedded offline default
#   make test  — the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The stamp changes when the dependency list changes, so edits to pyproject.toml reinstall.
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: app test setup notebooks clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -e '.[dev,cluster]'
	@# Byte-compiled on every core at once (pip compiles one file at a time: half of a 2-core install);
	@# a few template files that are not Python fail to compile, as they do under pip.
	$(PY) -m compileall -q -q -j 0 $(VENV)/lib || true
	rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)
	bash scripts/install-system-deps.sh
	$(PY) scripts/fetch_npm_data.py $(VENV)/share/taps-data

app: setup
	$(VENV)/bin/streamlit run app.py --server.address localhost

test: setup
	bash scripts/install-system-deps.sh --browser
	$(PY) -m pytest -q --suite-budget-min=20  # the README's budget, on the reference machine's scale

notebooks: setup
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf $(VENV) build *.egg-info
