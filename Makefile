# Two commands set everything up on a fresh clone:
#   make demo   - create .venv, install, train ce and pgd-at on the embedded dataset, print the leaderboard
#   make test   - create .venv, install with test extras, run the test suite
PYTHON ?= python3
VENV   := .venv
PIP    := $(VENV)/bin/pip
BENCH  := $(VENV)/bin/bench
DEMO_OUT ?= results/demo

.PHONY: install install-test demo test test-extended clean

$(VENV)/.installed: pyproject.toml requirements-lock.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements-lock.txt
	$(PIP) install -q --no-deps -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q "pytest>=8" "pytest-timeout>=2.3"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BENCH) run --method ce --preset demo --out $(DEMO_OUT) -q
	$(BENCH) run --method pgd-at --preset demo --out $(DEMO_OUT) -q
	$(BENCH) compare --out $(DEMO_OUT)

test: install-test
	$(VENV)/bin/python -m pytest -q tests

test-extended: install-test
	$(VENV)/bin/python -m pytest -q -m extended tests

clean:
	rm -rf $(VENV) *.egg-info
