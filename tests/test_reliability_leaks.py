"""Leaks: creating and deleting objects, interpreters and harness interpreters
many times leaves the resident memory flat.

Each check runs in its own process (a plain tclsh, or a fresh Python) so
that the numbers are that workload's alone: resident memory (VmRSS from
/proc/self/status) is read after a warm-up round, which fills the
allocators' pools, and again after the full run. A leak of even a few
hundred bytes per object shows up as megabytes over 10,000 objects; a
child interpreter that kept its registry would keep its 1 MB tensor, so
200 of them would add 200 MB.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import RSS_PROC, run_tclsh, tclsh_env

MIB = 1024
# Allowed growth of VmRSS between the end of the warm-up and the end of the
# full run, in KiB: 20 MiB in all for the 30,000 objects, and 4 MiB for each
# kind (10,000 objects: a leak of 420 bytes per object fails); 8 MiB for 200
# interpreters (42 KiB each; the registry of one holds a 1 MiB tensor).
GROWTH_BOUND_KIB = 20 * MIB
PER_KIND_BOUND_KIB = 4 * MIB
INTERP_BOUND_KIB = 8 * MIB
OBJECTS = 10_000
WARMUP_OBJECTS = 1_000
CHILD_INTERPS = 200
WARMUP_INTERPS = 20
HARNESS_INTERPS = 200
WARMUP_HARNESS = 20


def numbers(out: str, prefix: str) -> list[int]:
    for line in out.splitlines():
        if line.startswith(prefix + " "):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError(f"no {prefix} line in {out!r}")


def check_tcl(script: str, timeout: float = 300) -> str:
    proc = run_tclsh(script, timeout=timeout)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc.stdout


OBJECTS_SCRIPT = RSS_PROC + r"""
package require torch
torch::manual_seed 0
set x [torch::randn {4 8}]
set y [torch::randn {4 8}]
# Deletes every handle but x and y.
proc clean {} {
    torch::delete {*}[lsearch -all -inline -not -regexp [torch::handles] "^($::x|$::y)\$"]
}

proc tensors {n} {
    for {set i 0} {$i < $n} {incr i} {
        set a [torch::randn {16 16}]
        set b [torch::add $a 1 2]
        set c [torch::tensor_create {{1 2 3} {4 5 6}} {} float64]
        torch::delete $a $b $c
    }
}
proc modules {n} {
    global x
    for {set i 0} {$i < $n} {incr i} {
        switch [expr {$i % 3}] {
            0 { set m [torch::linear 8 8] }
            1 { set m [torch::sequential [list [torch::linear 8 8] [torch::relu]]] }
            2 { set m [torch::dropout 0.1] }
        }
        set out [torch::forward $m $x]
        set params [torch::parameters $m]
        clean   ;# the sequential's parts have handles too
    }
}
proc optimizers {n} {
    global x y
    for {set i 0} {$i < $n} {incr i} {
        set w [torch::randn {8 8} float32 1]
        switch [expr {$i % 4}] {
            0 { set o [torch::optimizer_adafactor -parameters $w -beta1 0.9] }
            1 { set o [torch::optimizer_adam -parameters $w] }
            2 { set o [torch::optimizer_adamw -parameters $w -amsgrad 1] }
            3 { set o [torch::optimizer_sgd -parameters $w -lr 0.1 -momentum 0.9] }
        }
        set loss [torch::mse_loss [torch::matmul $x $w] $y]
        torch::tensor_backward $loss
        torch::optimizer_step $o
        set state [torch::optimizer_state $o]
        clean
    }
}

set base [torch::handles]
foreach kind {tensors modules optimizers} { $kind $WARMUP }
set r0 [rss_kib]
set t0 [clock milliseconds]
foreach kind {tensors modules optimizers} {
    $kind $N
    puts "AFTER_$kind [rss_kib]"
}
set r1 [rss_kib]
puts "RSS $r0 $r1 [expr {[clock milliseconds] - $t0}]"
puts "HANDLES [llength [torch::handles]] [llength $base]"
"""


def test_objects_created_and_deleted_leave_rss_flat():
    script = f"set N {OBJECTS}\nset WARMUP {WARMUP_OBJECTS}\n" + OBJECTS_SCRIPT
    out = check_tcl(script)
    r0, r1, ms = numbers(out, "RSS")
    live, base = numbers(out, "HANDLES")
    kinds = ("tensors", "modules", "optimizers")
    after = [r0] + [numbers(out, f"AFTER_{k}")[0] for k in kinds]
    growth = {k: after[i + 1] - after[i] for i, k in enumerate(kinds)}
    print(f"\n[leaks] {OBJECTS} x (3 tensors), {OBJECTS} modules (forward, parameters), "
          f"{OBJECTS} optimizers (backward, step, state) in {ms / 1000:.1f} s: VmRSS "
          f"{r0 / MIB:.1f} MiB after warm-up, {r1 / MIB:.1f} MiB after; growth "
          + ", ".join(f"{k} {g / MIB:+.2f}" for k, g in growth.items())
          + f", total {(r1 - r0) / MIB:+.2f} MiB (bounds {PER_KIND_BOUND_KIB / MIB:.0f} MiB "
          f"per kind, {GROWTH_BOUND_KIB / MIB:.0f} MiB in all)")
    assert live == base == 2
    assert all(g < PER_KIND_BOUND_KIB for g in growth.values()), growth
    assert r1 - r0 < GROWTH_BOUND_KIB, (r0, r1)


INTERPS_SCRIPT = RSS_PROC + r"""
package require torch
proc children {n} {
    for {set i 0} {$i < $n} {incr i} {
        set c [interp create]
        $c eval [list set auto_path $::auto_path]
        $c eval {
            package require torch
            set big [torch::zeros {262144}]   ;# 1 MiB
            set w [torch::randn {16 16} float32 1]
            set o [torch::optimizer_adafactor -parameters $w]
            torch::tensor_backward [torch::sum [torch::mul $w $w]]
            torch::optimizer_step $o
            set m [torch::sequential [list [torch::linear 16 4] [torch::relu]]]
            torch::forward $m $w
        }
        # nothing deleted by hand: interp delete must free it all
        interp delete $c
    }
}
children $WARMUP
set r0 [rss_kib]
set t0 [clock milliseconds]
children $N
set r1 [rss_kib]
puts "RSS $r0 $r1 [expr {[clock milliseconds] - $t0}]"
puts "HANDLES [llength [torch::handles]]"
"""


def test_child_interpreters_free_everything():
    script = f"set N {CHILD_INTERPS}\nset WARMUP {WARMUP_INTERPS}\n" + INTERPS_SCRIPT
    out = check_tcl(script)
    r0, r1, ms = numbers(out, "RSS")
    print(f"\n[leaks] {CHILD_INTERPS} child interpreters (package require torch, a 1 MiB "
          f"tensor, an Adafactor step, a sequential each; never deleted by hand) in "
          f"{ms / 1000:.1f} s: VmRSS {r0 / MIB:.1f} -> {r1 / MIB:.1f} MiB, growth "
          f"{(r1 - r0) / MIB:+.2f} MiB (bound {INTERP_BOUND_KIB / MIB:.0f} MiB; "
          f"a kept registry would add {CHILD_INTERPS} MiB)")
    assert numbers(out, "HANDLES") == [0]
    assert r1 - r0 < INTERP_BOUND_KIB, (r0, r1)


HARNESS_SCRIPT = """
import gc, re, sys, time
from tcltorch.tcl import Interp

def rss_kib():
    with open("/proc/self/status") as f:
        return int(re.search(r"VmRSS:\\s+(\\d+)", f.read()).group(1))

def run(n):
    for i in range(n):
        tcl = Interp()
        h = tcl.eval("torch::zeros {262144}")   # 1 MiB
        t = tcl.tensor(h)
        t.add_(i)
        assert float(tcl.eval(f"torch::tensor_item [torch::sum {h}]")) == 262144.0 * i
        tcl.eval("torch::optimizer_adafactor -parameters [torch::randn {8 8} float32 1]")
        del t
        tcl.close()
        del tcl
    gc.collect()

run(int(sys.argv[2]))
r0 = rss_kib()
t0 = time.monotonic()
run(int(sys.argv[1]))
r1 = rss_kib()
print("RSS", r0, r1, int((time.monotonic() - t0) * 1000))
"""


def test_harness_interpreters_free_everything(tmp_path):
    script = tmp_path / "harness_leak.py"
    script.write_text(HARNESS_SCRIPT)
    env = tclsh_env()
    proc = subprocess.run([sys.executable, str(script), str(HARNESS_INTERPS),
                           str(WARMUP_HARNESS)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1, ms = numbers(proc.stdout, "RSS")
    print(f"\n[leaks] {HARNESS_INTERPS} tcltorch.tcl.Interp() with a 1 MiB tensor each, "
          f"closed, in {ms / 1000:.1f} s: VmRSS {r0 / MIB:.1f} -> {r1 / MIB:.1f} MiB, growth "
          f"{(r1 - r0) / MIB:+.2f} MiB (bound {INTERP_BOUND_KIB / MIB:.0f} MiB; "
          f"a kept registry would add {HARNESS_INTERPS} MiB)")
    assert r1 - r0 < INTERP_BOUND_KIB, (r0, r1)
