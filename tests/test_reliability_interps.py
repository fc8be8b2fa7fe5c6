"""Interpreters and threads: every interpreter has its own registry.

  - two tkinter interpreters (tcltorch.tcl.Interp) in one process,
  - Tcl child interpreters (`interp create`, each loading the package),
  - Tcl threads (the Thread package), training at the same time,

each see only their own handles (the same handle name is a different tensor
in each), deleting an interpreter frees what it held (a 200 MiB tensor: the
resident memory goes back down), and threads train concurrently with the
results of a single-threaded run, bit for bit.
"""
from __future__ import annotations

import re

import pytest

from conftest import RSS_PROC, run_tclsh
from tcltorch.tcl import Interp, TclError

MIB = 1024
BIG_ELEMENTS = 50 * 1024 * 1024      # float32: 200 MiB
BIG_KIB = BIG_ELEMENTS * 4 // 1024
# After deleting the interpreter that held the big tensor, resident memory
# must be within this of where it was before the tensor was made.
FREED_SLACK_KIB = 20 * MIB


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def numbers(out: str, prefix: str) -> list[str]:
    for line in out.splitlines():
        if line.startswith(prefix + " "):
            return line.split()[1:]
    raise AssertionError(f"no {prefix} line in {out!r}")


def check_tcl(script: str, timeout: float = 300) -> str:
    proc = run_tclsh(script, timeout=timeout)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc.stdout


# ------------------------------------------------------------ tkinter

def test_two_harness_interpreters_have_their_own_registries():
    a, b = Interp(), Interp()
    try:
        ha = a.eval("torch::full {3} 1")
        hb = b.eval("torch::full {3} 2")
        assert ha == hb == "tensor1"  # the same name ...
        assert a.eval(f"torch::tensor_to_list {ha}") == "1.0 1.0 1.0"  # ... other tensors
        assert b.eval(f"torch::tensor_to_list {hb}") == "2.0 2.0 2.0"
        assert a.tensor(ha).data_ptr() != b.tensor(hb).data_ptr()
        only_a = a.eval("torch::linear 2 2")
        with pytest.raises(TclError) as info:
            b.eval(f"torch::parameters {only_a}")
        assert info.value.code[:2] == ("TORCH", "HANDLE")
        a.eval(f"torch::delete {ha}")
        assert b.eval(f"torch::tensor_to_list {hb}") == "2.0 2.0 2.0"
        assert a.handles() == (only_a,) and b.handles() == (hb,)
    finally:
        a.close()
        b.close()


def test_closing_a_harness_interpreter_frees_its_tensors():
    keep, gone = Interp(), Interp()
    try:
        h = keep.eval("torch::full {4} 5")
        r0 = rss_kib()
        gone.eval(f"torch::zeros {BIG_ELEMENTS}")
        r1 = rss_kib()
        gone.close()
        del gone
        r2 = rss_kib()
        print(f"\n[interps] tkinter: VmRSS {r0 / MIB:.0f} MiB, {r1 / MIB:.0f} MiB with a "
              f"{BIG_KIB // MIB} MiB tensor, {r2 / MIB:.0f} MiB after closing its interpreter")
        assert r1 - r0 > BIG_KIB * 0.9
        assert r2 - r0 < FREED_SLACK_KIB
        assert keep.eval(f"torch::tensor_to_list {h}") == "5.0 5.0 5.0 5.0"
    finally:
        keep.close()


# ------------------------------------------------------------ child interpreters

CHILDREN = RSS_PROC + r"""
package require torch
proc child {} {
    set c [interp create]
    $c eval [list set auto_path $::auto_path]
    $c eval {package require torch}
    return $c
}
set p1 [torch::full {3} 1]
set c [child]
set c1 [$c eval {torch::full {3} 2}]
puts "NAMES $p1 $c1"
set s1 [torch::sum $p1]
set s2 [$c eval [list torch::sum $c1]]
puts "SUMS [torch::tensor_item $s1] [$c eval [list torch::tensor_item $s2]]"
torch::delete $s1
set p2 [torch::linear 2 2]
puts "CHILD_SEES_PARENT [catch {$c eval [list torch::parameters $p2]} msg opts] [lrange [dict get $opts -errorcode] 0 1]"
set c2 [$c eval {torch::optimizer_sgd [torch::zeros {2} float32 1]}]
puts "PARENT_SEES_CHILD [catch {torch::optimizer_step $c2} msg opts] [lrange [dict get $opts -errorcode] 0 1]"
$c eval [list torch::delete $c1]
puts "AFTER_CHILD_DELETE [torch::tensor_to_list $p1] [llength [$c eval {torch::handles tensor1}]]"
interp delete $c
puts "PARENT_HANDLES [torch::handles]"

# A child holding 200 MiB, and a grandchild (inside it) holding 100 MiB:
# deleting the child frees both.
set r0 [rss_kib]
set c [child]
$c eval [list torch::zeros $BIG]
$c eval [list set auto_path $::auto_path]
$c eval {
    interp create g
    g eval [list set auto_path $auto_path]
    g eval {package require torch}
}
$c eval [list g eval [list torch::ones [expr {$BIG / 2}]]]
set r1 [rss_kib]
interp delete $c
set r2 [rss_kib]
puts "RSS $r0 $r1 $r2"
puts "PARENT_HANDLES2 [torch::handles]"
puts "STILL_WORKS [torch::tensor_item [torch::sum [torch::full {2 2} 3]]]"
"""


def test_child_interpreters_have_their_own_registries_and_free_them():
    out = check_tcl(f"set BIG {BIG_ELEMENTS}\n" + CHILDREN)
    assert numbers(out, "NAMES") == ["tensor1", "tensor1"]
    assert numbers(out, "SUMS") == ["3.0", "6.0"]
    assert numbers(out, "CHILD_SEES_PARENT") == ["1", "TORCH", "HANDLE"]
    assert numbers(out, "PARENT_SEES_CHILD") == ["1", "TORCH", "HANDLE"]
    assert numbers(out, "AFTER_CHILD_DELETE") == ["1.0", "1.0", "1.0", "0"]
    assert numbers(out, "PARENT_HANDLES") == ["tensor1", "module1"]
    assert numbers(out, "PARENT_HANDLES2") == numbers(out, "PARENT_HANDLES")
    r0, r1, r2 = map(int, numbers(out, "RSS"))
    print(f"\n[interps] child interp: VmRSS {r0 / MIB:.0f} MiB, {r1 / MIB:.0f} MiB with "
          f"{BIG_KIB // MIB} MiB in a child and {BIG_KIB // 2 // MIB} MiB in a grandchild, "
          f"{r2 / MIB:.0f} MiB after `interp delete` of the child")
    assert r1 - r0 > BIG_KIB * 1.5 * 0.9
    assert r2 - r0 < FREED_SLACK_KIB
    assert numbers(out, "STILL_WORKS") == ["12.0"]


# ------------------------------------------------------------ threads

# Trains a 48x32 weight with Adafactor (first moment, relative step off) on
# fixed data derived from `seed`; returns the weights, the last loss and the
# handles it left (none: it deletes what each step makes, then its own).
TRAIN = r"""
proc data {rows cols seed} {
    set out {}
    for {set i 0} {$i < $rows} {incr i} {
        set row {}
        for {set j 0} {$j < $cols} {incr j} {
            lappend row [expr {sin($seed * 1.3 + $i * 0.7 + $j * 0.11)}]
        }
        lappend out $row
    }
    return $out
}
proc train {seed steps} {
    set before [torch::handles]
    set x [torch::tensor_create [data 64 48 $seed]]
    set y [torch::tensor_create [data 64 32 [expr {$seed + 17}]]]
    set w [torch::tensor_create [data 48 32 [expr {$seed + 5}]] {} float32 1]
    set o [torch::optimizer_adafactor -parameters $w -relativeStep 0 -lr 0.01 -beta1 0.9]
    set keep [list {*}$before $x $y $w $o]
    for {set i 0} {$i < $steps} {incr i} {
        torch::optimizer_zero_grad $o
        set loss [torch::mse_loss [torch::matmul $x $w] $y]
        torch::tensor_backward $loss
        torch::optimizer_step $o
        set last [torch::tensor_item $loss]
        torch::delete {*}[lmap h [torch::handles] {expr {$h in $keep ? [continue] : $h}}]
    }
    set weights [torch::tensor_to_list $w]
    torch::delete $x $y $w $o
    set left [lmap h [torch::handles] {expr {$h in $before ? [continue] : $h}}]
    return [list $weights $last $left]
}
"""

THREADS = RSS_PROC + r"""
if {[catch {package require Thread} err]} {
    puts "NO_THREAD $err"
    exit 0
}
package require torch
eval $TRAIN
set setup [list apply {{path train} {
    set ::auto_path $path
    package require torch
    eval $train
}} $auto_path $TRAIN]

# References. In this (the main) interpreter ...
set main_tensor [torch::full {2} 7]
set start [clock milliseconds]
foreach seed {1 2} { set main($seed) [train $seed $STEPS] }
puts "REFMS [expr {[clock milliseconds] - $start}]"

set t1 [thread::create]
set t2 [thread::create]
thread::send $t1 $setup
thread::send $t2 $setup
# Handles are per thread: the same name, another tensor.
set th [thread::send $t1 {torch::full {2} 9}]
# ... and in a thread, alone (the other one idle): what the concurrent runs
# must give bit for bit (LibTorch may pick other kernels or thread counts
# in the main thread, so that one is compared with a tolerance).
foreach seed {1 2} { set ref($seed) [thread::send $t1 [list train $seed $STEPS]] }

proc maxdiff {a b} {
    set m 0.0
    foreach ra $a rb $b {
        foreach x $ra y $rb { set m [expr {max($m, abs($x - $y))}] }
    }
    return $m
}
puts "MAINDIFF [maxdiff [lindex $ref(1) 0] [lindex $main(1) 0]] [maxdiff [lindex $ref(2) 0] [lindex $main(2) 0]]"

for {set round 0} {$round < $ROUNDS} {incr round} {
    unset -nocomplain r1 r2
    # odd rounds swap the problems between the threads
    lassign [expr {$round % 2 ? {2 1} : {1 2}}] s1 s2
    set start [clock milliseconds]
    thread::send -async $t1 [list train $s1 $STEPS] r1
    thread::send -async $t2 [list train $s2 $STEPS] r2
    vwait r1
    if {![info exists r2]} { vwait r2 }
    set ms [expr {[clock milliseconds] - $start}]
    set same1 [expr {$r1 eq $ref($s1)}]
    set same2 [expr {$r2 eq $ref($s2)}]
    puts "ROUND $round $same1 $same2 $ms [lindex $r1 1] [lindex $r2 1] [llength [lindex $r1 2]] [llength [lindex $r2 2]]"
}
puts "REFLOSS [lindex $ref(1) 1] [lindex $ref(2) 1] [expr {[lindex $ref(1) 0] ne [lindex $ref(2) 0]}]"

puts "THREAD_HANDLE $th $main_tensor [thread::send $t1 [list torch::tensor_to_list $th]] [torch::tensor_to_list $main_tensor]"
puts "THREAD_SEES_MAIN [thread::send $t2 [list catch [list torch::tensor_shape $th] msg]]"

# A thread's interpreter is deleted when the thread exits: what it held is freed.
set r0 [rss_kib]
thread::send $t2 [list torch::zeros $BIG]
set r1 [rss_kib]
thread::release -wait $t2
# -wait returns when the thread is marked to exit; its interpreter is
# deleted (and the memory unmapped) by the thread itself a moment later.
set waited 0
while {[set r2 [rss_kib]] - $r0 >= $SLACK && $waited < 10000} {
    after 50
    incr waited 50
}
puts "RSS $r0 $r1 $r2 $waited"
thread::release -wait $t1
puts "MAIN_HANDLES [torch::handles]"
"""

STEPS = 150
ROUNDS = 3


def test_threads_train_concurrently_with_their_own_registries():
    script = (f"set STEPS {STEPS}\nset ROUNDS {ROUNDS}\nset BIG {BIG_ELEMENTS}\n"
              f"set SLACK {FREED_SLACK_KIB}\n"
              f"set TRAIN {{{TRAIN}}}\n" + THREADS)
    out = check_tcl(script)
    if out.startswith("NO_THREAD"):
        pytest.skip("the Tcl Thread package is not installed (`package require Thread` "
                    f"fails: {out.split(' ', 1)[1].strip()}); on Debian: apt-get install "
                    "tcl-thread")
    rounds = [line.split()[1:] for line in out.splitlines() if line.startswith("ROUND ")]
    assert len(rounds) == ROUNDS
    l1, l2, differ = numbers(out, "REFLOSS")
    d1, d2 = map(float, numbers(out, "MAINDIFF"))
    print(f"\n[interps] references: 2 x {STEPS} steps one after the other in the main "
          f"interpreter took {numbers(out, 'REFMS')[0]} ms; in one thread alone: last losses "
          f"{l1} {l2}, weights within {max(d1, d2):.3g} of the main interpreter's")
    for _, same1, same2, ms, loss1, loss2, live1, live2 in rounds:
        print(f"[interps] 2 threads x {STEPS} Adafactor steps at once: {ms} ms, "
              f"last losses {loss1} {loss2}, weights equal to the one-thread reference "
              f"bit for bit: {same1 == same2 == '1'}")
        assert (same1, same2) == ("1", "1"), "a thread's training differs from the reference"
        assert live1 == live2 == "0"  # train deleted everything it made
    assert differ == "1"  # the two trainings are different problems
    assert float(l1) < 1.0 and float(l2) < 1.0
    assert d1 < 1e-5 and d2 < 1e-5
    th, mt, *values = numbers(out, "THREAD_HANDLE")
    assert th == mt == "tensor1"
    assert values == ["9.0", "9.0", "7.0", "7.0"]
    assert numbers(out, "THREAD_SEES_MAIN") == ["1"]
    r0, r1, r2, waited = map(int, numbers(out, "RSS"))
    print(f"[interps] thread: VmRSS {r0 / MIB:.0f} MiB, {r1 / MIB:.0f} MiB with "
          f"{BIG_KIB // MIB} MiB in a thread, {r2 / MIB:.0f} MiB after the thread exited "
          f"(polled {waited} ms after thread::release -wait)")
    assert r1 - r0 > BIG_KIB * 0.9
    assert r2 - r0 < FREED_SLACK_KIB
    assert numbers(out, "MAIN_HANDLES") == [mt]
