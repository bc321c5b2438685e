# Two commands do all the set-up on a fresh machine (Python >= 3.11 with venv and a C compiler):
#   make demo   - build, install and run the relay with the embedded echo.demo agent on :8765
#   make test   - build, install and run the whole test suite (what .ci/run calls)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.wsrelay-installed
SOURCES := pyproject.toml setup.py $(wildcard csrc/wsrelay/pump/*.pyx csrc/wsrelay/pump/*.pxd csrc/wsrelay/pump/*.pxi)

.PHONY: demo test bench install clean

install: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/wsrelay serve

# The whole suite: micro-benchmarks (short), the side-by-side check against nginx (short,
# fails only on a large regression of the ratio), then every test.
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider benchmarks/test_micro.py --benchmark-min-rounds=3 --benchmark-max-time=0.2
	$(BIN)/python benchmarks/e2e.py --quick --relays wsrelay,nginx --workloads pingpong,audio --repeats 3 --check benchmarks/baseline.json
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -q tests

# The full side-by-side benchmark (a few minutes on 2 cores): table, JSON and plot.
bench: $(STAMP)
	mkdir -p benchmarks/results
	$(BIN)/python benchmarks/e2e.py --json benchmarks/results/e2e.json --plot benchmarks/results/e2e.png

clean:
	rm -rf build src/*.egg-info src/wsrelay/pump/*.so csrc/wsrelay/pump/*.c $(VENV)
