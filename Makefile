# Two commands do all the set-up on a fresh machine (Python >= 3.11 with venv and a C compiler):
#   make demo   - build, install and run the relay with the embedded echo.demo agent on :8765
#   make test   - build, install and run the whole test suite (what .ci/run calls)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.wsrelay-installed
SOURCES := pyproject.toml setup.py $(wildcard csrc/wsrelay/*.pyx csrc/wsrelay/*.pxd)

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/wsrelay serve

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf build src/*.egg-info src/wsrelay/*.so csrc/wsrelay/*.c $(VENV)
