# Two commands do all the set-up on a fresh machine (Python >= 3.11 with venv and a C compiler):
#   make demo   - build, install and run the relay with the embedded echo.demo agent on :8765
#   make test   - build the wheel, install it, and run the whole test suite against it (.ci/run)
#
# The product is the wheel: `make test` builds the sdist and, from it, the manylinux wheel for
# the running Python, installs that wheel (not the tree) into a fresh venv and tests it, builds
# the extension once more from the sdist alone, and smoke-tests the wheel with no compiler.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.wsrelay-installed
TESTVENV ?= .venv-wheel
TESTBIN  := $(TESTVENV)/bin
SOURCES := pyproject.toml setup.py $(wildcard csrc/wsrelay/pump/*.pyx csrc/wsrelay/pump/*.pxd csrc/wsrelay/pump/*.pxi)

.PHONY: demo test test-installed test-suite docs docs-build wheel wheels wheels-check sdist sdist-check bench bench-short bench-gate bench-gate-record bench-picows-patch fuzz sanitize soak image image-check install clean

# The hot path's packages at the versions the benchmark gate's counts were recorded with
# (benchmarks/constraints.txt): the test venv is installed, and the wheel built, with them.
CONSTRAINTS := $(CURDIR)/benchmarks/constraints.txt

install: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/wsrelay serve

# The whole suite, against the installed wheel: build it, install it into a fresh venv, check
# the sdist builds on its own and the wheel installs with no compiler, then every test; then the
# container image is built and checked (make image-check: about 3 minutes on a cold machine).
test: wheel
	$(PYTHON) -m venv --clear $(TESTVENV)
	$(TESTBIN)/python -m pip install --quiet --upgrade pip
	$(TESTBIN)/python -m pip install --quiet -c $(CONSTRAINTS) "$$(ls dist/wsrelay-*-cp$$($(PYTHON) -c 'import sys; print("%d%d" % sys.version_info[:2])')-*.whl)[test]"
	$(PYTHON) tools/wheels.py check --current
	$(PYTHON) tools/wheels.py check-sdist
	$(MAKE) test-installed PY=$(TESTBIN)/python
	$(MAKE) image-check PY=$(TESTBIN)/python

# Every test against whichever wsrelay $(PY) imports (the wheel under `make test`; cibuildwheel
# runs it in its own test venv). Not from src/: the suite asserts what it imports is installed.
PY ?= python3
test-installed:
	WSRELAY_EXPECT_INSTALLED=1 $(PY) -m pytest -q -p no:cacheprovider benchmarks/test_micro.py --benchmark-min-rounds=3 --benchmark-max-time=0.2
	$(MAKE) bench-gate PY=$(PY)
	$(MAKE) fuzz PY=$(PY) FUZZ_SECONDS=10
	$(MAKE) sanitize PY=$(PY)
	$(MAKE) soak PY=$(PY) SOAK_MINUTES=2
	$(PY) -m mypy
	$(MAKE) docs-build PY=$(PY)
	$(MAKE) test-suite PY=$(PY)

# The tests alone (cibuildwheel runs this in its containers, with PYTEST_ARGS='-m "not system"').
test-suite:
	WSRELAY_EXPECT_INSTALLED=1 $(PY) -m pytest -q tests $(PYTEST_ARGS)

# The documentation (docs/*.md, mkdocs.yml) into site/: a broken link, a missing anchor or a page
# left out of the nav fails it (--strict). mkdocs is in the [test] extra; `make test` builds it too.
docs: $(STAMP)
	$(MAKE) docs-build PY=$(BIN)/python

docs-build:
	$(PY) -m mkdocs build --strict --site-dir site

# The sdist alone (the release workflow builds it apart from the wheels).
sdist:
	$(PYTHON) tools/wheels.py sdist

# sdist + the wheel for the running Python, auditwheel-repaired into dist/ (built with the
# pinned Cython of benchmarks/constraints.txt, so the gate's instruction counts hold).
wheel:
	PIP_CONSTRAINT=$(CONSTRAINTS) PIP_BUILD_CONSTRAINT=$(CONSTRAINTS) $(PYTHON) tools/wheels.py build --current

# sdist + one wheel per CPython 3.11, 3.12, 3.13, 3.14 found (pyenv, then PATH); says which were missing.
wheels:
	$(PYTHON) tools/wheels.py build

# Each built wheel in a fresh venv with no compiler reachable; the demo must echo.
wheels-check:
	$(PYTHON) tools/wheels.py check

# The sdist alone builds and runs (a file missing from it fails here).
sdist-check:
	$(PYTHON) tools/wheels.py check-sdist

# The full side-by-side benchmark (a few minutes on 2 cores): table, JSON and plot.
bench: $(STAMP)
	mkdir -p benchmarks/results
	$(BIN)/python benchmarks/e2e.py --json benchmarks/results/e2e.json --plot benchmarks/results/e2e.png

# Idle memory with the upstream picows patches (patches/picows/) against stock picows: builds
# the pinned picows from its sdist with them into benchmarks/results/picows-patched.
bench-picows-patch: $(STAMP)
	mkdir -p benchmarks/results
	$(BIN)/python benchmarks/picows_patched.py --sessions 3000 --json benchmarks/results/picows-patched.json

# A short side-by-side run with a small audio sweep: JSON and plot for CI's artifacts (figures:
# what fails CI is `make bench-gate`).
bench-short:
	mkdir -p benchmarks/results
	$(PY) benchmarks/e2e.py --quick --relays wsrelay,nginx,haproxy --workloads pingpong,audio,setup --repeats 5 \
		--json benchmarks/results/short.json --plot benchmarks/results/short.png

# Exactly what CI gates on (`make test` runs it): instructions and system calls per session and
# per relayed frame against benchmarks/baseline.json, then the ratios to nginx as figures that
# fail only when over their limit three runs in a row (benchmarks/gate.py says why). About 3 min.
GATE_ARGS ?=
bench-gate:
	$(PY) benchmarks/gate.py $(GATE_ARGS)

# Coverage-guided fuzzing (atheris) of every parser of hostile input, FUZZ_SECONDS each, from
# the seeds in tests/fuzz/corpus/ (tests/fuzz/run.py says what to do with a crash).
FUZZ_SECONDS ?= 60
FUZZ_HARNESSES := request routing tokens telephony frames start_api config
fuzz:
	@for name in $(FUZZ_HARNESSES); do \
		out=$$(mktemp); \
		$(PY) tests/fuzz/run.py $$name --seconds $(FUZZ_SECONDS) > $$out 2>&1; rc=$$?; \
		echo "fuzz $$name: $$(grep -E '^Done' $$out) ($$(grep -Eo 'average_exec_per_sec: *[0-9]+' $$out | grep -Eo '[0-9]+$$')/s)"; \
		if [ $$rc -ne 0 ]; then tail -40 $$out; rm -f $$out; exit 1; fi; \
		rm -f $$out; \
	done

# The compiled pump built by clang with AddressSanitizer and UndefinedBehaviorSanitizer into
# build/sanitize/, and the tests that drive it hardest run against it (tools/sanitize.py; clang
# from Debian's packages is installed when missing). About 2 minutes.
sanitize:
	$(PY) tools/sanitize.py

# The soak: one relay, 500 audio streams coming and going, a bot killed every 20-30 s, for
# SOAK_MINUTES; asserts what benchmarks/soak.py says and prints one JSON object (exit 1 and the
# failed assertions otherwise). `make test` runs it for 2 minutes.
SOAK_MINUTES ?= 30
soak:
	$(PY) benchmarks/soak.py --minutes $(SOAK_MINUTES)

# The container image from the Dockerfile, built with buildah (no Docker daemon; buildah and
# debootstrap come from Debian's packages, installed when missing). Without IMAGE_BASE the base is
# a stand-in for python:3.11-slim built from Debian's packages and cached (tools/image.py says how);
# IMAGE_BASE=python:3.11-slim builds on the real one where it can be pulled.
IMAGE_BASE ?=
image:
	$(PYTHON) tools/image.py build $(if $(IMAGE_BASE),--base $(IMAGE_BASE))

# Runs the image as deploy/kubernetes/ does (non-root, config mounted, a bot on the host) and checks
# from the host: echo, /healthz, /readyz, the HEALTHCHECK, SIGTERM's drain and 1012, size, no compiler
# or source left. One JSON object (docs/fleet.md, "Container and Kubernetes", has the last result).
image-check: image
	$(PY) tools/image.py check

# Measure this machine's counts and write them into benchmarks/baseline.json (for this Python
# minor version and the pins of benchmarks/constraints.txt). Commit the result with the change
# that moved the counts, and say why in its message.
bench-gate-record:
	$(PY) benchmarks/gate.py --record

clean:
	rm -rf build dist site src/*.egg-info src/wsrelay/pump/*.so csrc/wsrelay/pump/*.c $(VENV) $(TESTVENV) .cache/wheel-tools
