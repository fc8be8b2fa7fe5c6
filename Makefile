# The two commands of the README:
#   make run    set everything up, then train on the digits data from Tcl
#   make test   set everything up, then run the whole test suite
# Overridable: TORCH_SPEC (default torch==2.13.0, CPU), VENV, PYTHON.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
export PYTHON VENV TORCH_SPEC

.PHONY: setup run test clean

setup:
	scripts/setup.sh

run: setup
	TCLLIBPATH="$$($(PY) -m tcltorch tcl-path)" tclsh examples/train_digits.tcl

test:
	WITH_TEST=1 scripts/setup.sh
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf build build-install.log
