#!/usr/bin/env bash
# Builds the core and the Tcl package with AddressSanitizer and
# UndefinedBehaviorSanitizer in a separate tree (build/sanitize), then runs
# Tcl scripts against that build in a plain tclsh: the seed page's examples,
# the digits example (one epoch), child interpreters, two threads, a 2-rank
# distributed run under torchrun, and a short run of the fuzzer of tests/test_reliability_fuzz.py.
#
# LibTorch and tclsh are not instrumented: the ASan runtime is preloaded
# (LD_PRELOAD) so that it is initialised before anything else, and it then
# checks every access made by the instrumented code (our csrc/ and tcl/),
# and every heap block whatever allocated it.
#
#   PY          Python with torch installed (default .venv/bin/python)
#   FUZZ_CALLS  calls of the short fuzz run (default 3000)
#   JOBS        parallel compile jobs (default: nproc)
#   SKIP_BUILD=1  reuse build/sanitize as it is
#
# Runtime options (override by exporting them):
#   ASAN_OPTIONS  detect_leaks=1: LeakSanitizer runs at each tclsh's exit
#                 (no suppressions were needed: what LibTorch and Tcl keep
#                 for the whole process stays reachable). Growth over many
#                 objects is what tests/test_reliability_leaks.py measures.
#                 allocator_may_return_null=1: the fuzz asks for terabytes on
#                 purpose (torch::zeros {1000000000000}), which must fail as a
#                 Tcl error; by default ASan aborts on such a request instead
#                 of returning null to LibTorch's allocator.
#   UBSAN_OPTIONS halt_on_error=1: the first undefined behaviour fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

PY=${PY:-.venv/bin/python}
FUZZ_CALLS=${FUZZ_CALLS:-3000}
JOBS=${JOBS:-$(nproc)}
build=build/sanitize
step() { printf '==> %s\n' "$*"; }

[ -x "$PY" ] || { echo "error: no Python at $PY (run make setup, or set PY)" >&2; exit 1; }
torch_prefix=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
flags="-fsanitize=address,undefined -fno-omit-frame-pointer"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  step "configuring $build (ASan + UBSan, RelWithDebInfo)"
  generator=()
  command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
  cmake -S . -B "$build" "${generator[@]}" \
    -DTCLTORCH_BUILD_PYTHON=OFF \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DPython_EXECUTABLE="$("$PY" -c 'import sys; print(sys.executable)')" \
    -DCMAKE_PREFIX_PATH="$torch_prefix" \
    -DCMAKE_CXX_FLAGS="$flags" \
    -DCMAKE_SHARED_LINKER_FLAGS="$flags" \
    -DCMAKE_EXE_LINKER_FLAGS="$flags" > "$build.configure.log" 2>&1 \
    || { tail -30 "$build.configure.log" >&2; exit 1; }
  step "building (first build: several minutes)"
  cmake --build "$build" --target tcltorch_tcl -j "$JOBS" > "$build.build.log" 2>&1 \
    || { grep -E "error|Error" "$build.build.log" | head -30 >&2; exit 1; }
fi

lib=$(find "$build" -maxdepth 1 -name 'libtcltorch_tcl*.so' | head -1)
[ -n "$lib" ] || { echo "error: no libtcltorch_tcl in $build" >&2; exit 1; }
version=$(sed -n 's/^project(tcltorch VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
pkgdir="$build/tcllib/torch"
mkdir -p "$pkgdir"
cat > "$pkgdir/pkgIndex.tcl" <<EOF
# The sanitized build (scripts/sanitize.sh), not the installed package.
package ifneeded torch $version [list load [file join "$repo" "$lib"] Torch]
EOF

asan_rt=$(g++ -print-file-name=libasan.so)
[ -f "$asan_rt" ] || { echo "error: no ASan runtime ($asan_rt)" >&2; exit 1; }
# libstdc++ too, right after it: tclsh does not link libstdc++, so without
# this ASan initialises before libstdc++ is loaded, finds no __cxa_throw to
# forward to, and the first C++ exception (every Tcl error that LibTorch
# reports) aborts with "CHECK failed: ... real___cxa_throw != 0".
cxx_rt=$(readlink -f "$(g++ -print-file-name=libstdc++.so)")
preload="$asan_rt $cxx_rt"
export TCLLIBPATH="$repo/$build/tcllib"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1:abort_on_error=1:halt_on_error=1:print_summary=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1:print_summary=1}
unset LD_LIBRARY_PATH

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0
# Runs a Tcl script (file) under the sanitizers; a report fails the run.
run() {
  local name=$1; shift
  local log="$work/$name.log"
  local start=$SECONDS
  if LD_PRELOAD="$preload" tclsh "$@" > "$log" 2>&1 \
     && ! grep -qE "ERROR: (Address|Leak)Sanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior|Leak)Sanitizer" "$log"; then
    step "ok: $name ($((SECONDS - start)) s)"
  else
    step "FAILED: $name ($((SECONDS - start)) s)"
    grep -E -A30 "ERROR: (Address|Leak)Sanitizer|runtime error:" "$log" | head -60 || tail -30 "$log"
    failed=1
  fi
}

# The package loads from the sanitized build, and not from elsewhere.
cat > "$work/which.tcl" <<'EOF'
package require torch
foreach {file pkg} [join [info loaded]] { if {$pkg eq "Torch"} { puts $file } }
EOF
LD_PRELOAD="$preload" tclsh "$work/which.tcl" | grep -q "$build" \
  || { echo "error: tclsh did not load the sanitized library" >&2; exit 1; }

# 1. The seed page's examples (tests/test_tcl_seed_examples.py), then a step.
cat > "$work/seed.tcl" <<'EOF'
package require torch
set tensor [torch::zeros {5 5} float32]
set opt [torch::optimizer_adafactor -parameters $tensor]
torch::optimizer_zero_grad $opt
torch::optimizer_step $opt
set t1 [torch::zeros {5 5} float32]
set t2 [torch::zeros {3 3} float32]
set params [list $t1 $t2]
set opt [torch::optimizer_adafactor -parameters $params -lr 0.8 -eps2 1e-30 \
    -clipThreshold 1.0 -decayRate 0.8 -beta1 0.9 -weightDecay 0.01]
set model [torch::sequential]
torch::add_module $model [torch::linear 784 256]
torch::add_module $model [torch::relu]
torch::add_module $model [torch::linear 256 10]
set opt [torch::optimizer_adafactor -parameters $model -lr 0.8]
set x [torch::randn {32 784}]
set y [torch::tensor_create [lrepeat 32 3] {} int64]
foreach variant {transformers torch} {
  foreach extra {{} {-fp32State 1} {-factoredDims largest_two -beta1 0.9}} {
    set opt [torch::optimizer_adafactor -parameters $model -variant $variant {*}$extra]
    for {set i 0} {$i < 3} {incr i} {
      torch::optimizer_zero_grad $opt
      set loss [torch::cross_entropy_loss [torch::forward $model $x] $y]
      torch::tensor_backward $loss
      torch::optimizer_step $opt
    }
    torch::optimizer_save $opt [file join [pwd] opt.pt]
    torch::optimizer_load $opt [file join [pwd] opt.pt]
    torch::optimizer_state $opt
  }
}
foreach dtype {float16 bfloat16 float64} {
  set p [torch::randn {7 5} $dtype 1]
  set opt [torch::optimizer_adafactor -parameters $p -stochasticRounding 1 -beta1 0.5]
  torch::tensor_backward [torch::sum [torch::mul $p $p]]
  torch::optimizer_step $opt
}
puts "loss [torch::tensor_item $loss]"
EOF
(cd "$work" && run seed-examples seed.tcl)

# 2. The digits example, a few steps of it.
if [ -f examples/train_digits.tcl ]; then
  run train-digits examples/train_digits.tcl 1
fi

# 3. Child interpreters: each loads the package, works, and is deleted.
cat > "$work/interps.tcl" <<'EOF'
package require torch
for {set i 0} {$i < 20} {incr i} {
  set c [interp create]
  $c eval [list set auto_path $auto_path]
  $c eval {
    package require torch
    set w [torch::randn {16 16} float32 1]
    set o [torch::optimizer_adafactor -parameters $w -beta1 0.9]
    torch::tensor_backward [torch::sum [torch::mul $w $w]]
    torch::optimizer_step $o
  }
  interp delete $c
}
EOF
run child-interpreters "$work/interps.tcl"

# 4. Two Tcl threads training at once (when the Thread package is there).
if tclsh scripts/tcl_has_package.tcl Thread >/dev/null 2>&1; then
  cat > "$work/threads.tcl" <<'EOF'
package require Thread
set body {
  set ::auto_path [lindex $argv 0]
  package require torch
  proc train {n} {
    set w [torch::randn {64 32} float32 1]
    set o [torch::optimizer_adafactor -parameters $w -beta1 0.9 -relativeStep 0 -lr 0.01]
    for {set i 0} {$i < $n} {incr i} {
      torch::optimizer_zero_grad $o
      torch::tensor_backward [torch::sum [torch::mul $w $w]]
      torch::optimizer_step $o
    }
    torch::tensor_item [torch::sum [torch::mul $w $w]]
  }
}
set ts {}
foreach k {1 2} {
  set t [thread::create]
  thread::send $t [list set argv [list $auto_path]]
  thread::send $t $body
  thread::send -async $t {train 100} result($k)
  lappend ts $t
}
foreach k {1 2} { if {![info exists result($k)]} { vwait result($k) } }
foreach t $ts { thread::release -wait $t }
puts "[array get result]"
EOF
  run threads "$work/threads.tcl"
else
  step "skipped: threads (no Tcl Thread package; apt-get install tcl-thread)"
fi

# 5. Two ranks under torchrun: data parallel training, the sharded Adafactor
# and its collective checkpoint (the worker of tests/test_tcl_distributed.py),
# each rank a sanitized tclsh; then the checkpoint resumed in one process.
mkdir -p "$work/ranks"
port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start=$SECONDS
if OMP_NUM_THREADS=1 timeout 600 "$PY" -m torch.distributed.run --nproc-per-node 2 \
     --master-addr 127.0.0.1 --master-port "$port" --no-python \
     env LD_PRELOAD="$preload" tclsh "$repo/tests/dist_tcl/train_ranks.tcl" "$work/ranks" \
     > "$work/two-ranks.log" 2>&1 \
   && ! grep -qE "ERROR: (Address|Leak)Sanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior|Leak)Sanitizer" "$work/two-ranks.log"; then
  step "ok: two-ranks ($((SECONDS - start)) s)"
else
  step "FAILED: two-ranks ($((SECONDS - start)) s)"
  grep -E -A30 "ERROR: (Address|Leak)Sanitizer|runtime error:" "$work/two-ranks.log" | head -60 \
    || tail -30 "$work/two-ranks.log"
  failed=1
fi
port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
run resume-one-rank "$repo/tests/dist_tcl/resume.tcl" "$work/ranks" "$port"

# 6. A short fuzz run (the generator and driver of tests/test_reliability_fuzz.py).
"$PY" tests/test_reliability_fuzz.py write-scripts "$work/fuzz"
LD_PRELOAD="$preload" tclsh "$work/fuzz/discover.tcl" > "$work/fuzz/commands.txt"
"$PY" tests/test_reliability_fuzz.py write-calls "$work/fuzz/commands.txt" \
  "$work/fuzz/calls.txt" "$FUZZ_CALLS"
mkdir -p "$work/fuzz/cwd"
(cd "$work/fuzz/cwd" && run fuzz "$work/fuzz/driver.tcl" "$work/fuzz/calls.txt" "$work/fuzz/files")
if grep -q "^VIOLATION" "$work/fuzz.log"; then
  grep "^VIOLATION" "$work/fuzz.log" | head -20
  failed=1
fi
grep -E "^STAT (calls|errors|ok|violations) " "$work/fuzz.log" | tr '\n' ' '; echo

if [ "$failed" = 0 ]; then
  step "sanitizers: clean"
else
  step "sanitizers: FAILED"
fi
exit "$failed"
