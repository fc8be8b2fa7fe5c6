# The two commands of the README:
#   make run    set everything up, then train on the digits data from Tcl
#   make test   set everything up, then run the whole test suite
#   make bench  set everything up, then time the optimizer step and whole
#               training steps side by side and regenerate docs/performance.md
#               (BENCH_ARGS: more options)
# Overridable: TORCH_SPEC (default torch==2.13.0, CPU), VENV, PYTHON.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
export PYTHON VENV TORCH_SPEC

.PHONY: setup run test bench clean

setup:
	scripts/setup.sh

run: setup
	TCLLIBPATH="$$($(PY) -m tcltorch tcl-path)" tclsh examples/train_digits.tcl

test:
	WITH_TEST=1 scripts/setup.sh
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) -m pip install -q --disable-pip-version-check -r benchmarks/requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps timm
	$(PY) benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf build build-install.log

# ASan + UBSan build of the core and the Tcl package in build/sanitize, and
# Tcl scripts run against it (examples, child interpreters, a short fuzz).
.PHONY: sanitize
sanitize: setup
	PY=$(PY) scripts/sanitize.sh
