#!/usr/bin/env bash
# Sets this checkout up from nothing: the Debian packages it builds against,
# a virtualenv with the pinned CPU torch, the build tools, and tcltorch itself
# (built against that torch and installed into the virtualenv).
#
#   TORCH_SPEC  torch requirement (default torch==2.13.0, the CPU build)
#   VENV        virtualenv directory (default .venv)
#   PYTHON      interpreter that creates it (default python3)
#   WITH_TEST=1 also install the test dependencies
#   SETUP_PRINT_MISSING=1  only print the Debian packages it would install, and stop
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
WITH_TEST=${WITH_TEST:-0}
step() { printf '==> %s\n' "$*"; }

# 1. System packages: Tcl with its headers and stubs library, its Thread
# package, a compiler, CMake, gloo's headers.
need=()
command -v tclsh >/dev/null 2>&1 || need+=(tcl tcl-thread)
[ -f /usr/include/tcl8.6/tcl.h ] || [ -f /usr/include/tcl/tcl.h ] || need+=(tcl-dev)
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v g++ >/dev/null 2>&1 || need+=(g++)
# gloo's headers, which torch's ProcessGroupGloo.hpp includes and the wheel
# lacks (tcltorch::distributed).
[ -f /usr/include/gloo/algorithm.h ] || need+=(libgloo-dev)
# The Thread package: Tcl threads in the reliability tests. Asked with a
# script file: tclsh reading commands from stdin exits 0 after an error.
if command -v tclsh >/dev/null 2>&1 && ! tclsh scripts/tcl_has_package.tcl Thread >/dev/null 2>&1; then
  need+=(tcl-thread)
fi
if [ "${SETUP_PRINT_MISSING:-0}" = 1 ]; then
  echo "${need[*]}"
  exit 0
fi
if ((${#need[@]})); then
  step "installing Debian packages: ${need[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi
if ! "$PYTHON" -c "import tkinter; tkinter.Tcl()" >/dev/null 2>&1; then
  echo "error: $PYTHON cannot create a Tcl interpreter (tkinter); the Python" >&2
  echo "       harness and tests need a Python built with _tkinter" >&2
  exit 1
fi

# 2. The virtualenv, torch first: an unpinned torch would pull a CUDA build.
if [ ! -x "$VENV/bin/python" ]; then
  step "creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
py="$VENV/bin/python"
pip_install() {
  local log
  log=$(mktemp)
  if ! "$py" -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" >&2
    rm -f "$log"
    echo "error: pip install $* failed" >&2
    exit 1
  fi
  grep -v "^WARNING: Location" "$log" || true
  rm -f "$log"
}
step "installing $TORCH_SPEC"
pip_install "$TORCH_SPEC" numpy
"$py" -c "import torch" || { echo "error: torch did not install" >&2; exit 1; }
step "installing build tools"
pip_install "scikit-build-core>=0.10" pybind11 ninja
if [ "$WITH_TEST" = 1 ]; then
  step "installing test dependencies"
  # accelerate: transformers.Trainer needs it (the Trainer tests).
  pip_install "pytest>=8" "transformers>=4.40" "accelerate>=1.1"
  # torch.testing._internal (PyTorch's own optimizer error inputs) imports it.
  pip_install expecttest
  # For the benchmark smoke test's timm row (without torchvision: see
  # benchmarks/requirements.txt).
  pip_install --no-deps timm
  # The other Adafactors the parity tests run beside ours (tests/test_anchor_parity.py):
  # pytorch_optimizer without its dependencies (it needs only torch), optax on CPU jax.
  pip_install --no-deps pytorch_optimizer
  pip_install optax "jax[cpu]"
fi

# 3. tcltorch, built against the torch just installed (no build isolation:
# an isolated build would fetch a different torch). build/ keeps the CMake
# tree between runs, so a rebuild only recompiles what changed.
step "building and installing tcltorch (first build: a few minutes)"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
# The compiler steps are in the log; scripts/build_progress.sh shows ninja's
# [n/N] counter while it grows. The build runs in its own process group, so
# that Ctrl-C (or a kill of this script) stops all of it.
setsid --wait "$py" -m pip install --disable-pip-version-check --no-build-isolation \
  --no-deps -v . > build-install.log 2>&1 &
build_pid=$!
scripts/build_progress.sh build-install.log "$build_pid" &
progress_pid=$!
trap 'kill -- -"$build_pid" 2>/dev/null || kill "$build_pid"; kill "$progress_pid"; exit 130' INT TERM
wait "$progress_pid" || true
trap - INT TERM
if ! wait "$build_pid"; then
  grep -E "error|Error|CMake" build-install.log | head -40 >&2
  echo "error: building tcltorch failed; the whole log is in build-install.log" >&2
  exit 1
fi
step "ready: $("$py" -m tcltorch version)"
