# Rank 1 leaves after the first collective; rank 0's next one must fail
# within the timeout. Before that, real file errors of a sharded optimizer's
# collective save and load; after it, the collectives inside them fail.
#   torchrun --nproc-per-node 2 --no-python tclsh early_exit.tcl outdir
package require torch
set out [lindex $argv 0]
torch::distributed_init -timeout 5
set rank [torch::distributed_rank]
set f [open [file join $out faults$rank.txt] w]
# One line per call: name, return code, -errorcode, milliseconds, message.
proc record {name script} {
    global f
    set start [clock milliseconds]
    set rc [catch {uplevel #0 $script} msg opts]
    set code [expr {$rc ? [dict get $opts -errorcode] : ""}]
    puts $f [list $name $rc $code [expr {[clock milliseconds] - $start}] $msg]
    flush $f
}
# Both ranks own state: two parameters of the same size.
set ws [list [torch::randn {4 3} float32 1] [torch::randn {4 3} float32 1]]
set opt [torch::optimizer_adafactor -parameters $ws -beta1 0.9 -shardState 1]
foreach w $ws { torch::tensor_backward [torch::sum [torch::mul $w $w]] }
torch::optimizer_step $opt
set good [file join $out good.pt]
set missing [file join $out missing.pt]
record save_good [list torch::optimizer_save $opt $good]
record save_bad_dir [list torch::optimizer_save $opt [file join $out no-such-dir x.pt]]
record load_missing [list torch::optimizer_load $opt $missing]
# Rank 1 alone cannot read its file: no rank takes the checkpoint.
record load_one_missing [list torch::optimizer_load $opt [expr {$rank == 1 ? $missing : $good}]]
record load_good [list torch::optimizer_load $opt $good]

set t [torch::tensor_create {1.0 2.0}]
torch::all_reduce $t
if {$rank == 1} { close $f; exit 0 }
after 500
set start [clock milliseconds]
set rc [catch {torch::all_reduce $t; torch::all_reduce $t} msg opts]
set elapsed [expr {[clock milliseconds] - $start}]
set e [open [file join $out early.txt] w]
puts $e [list $rc [dict get $opts -errorcode] $elapsed $msg]
close $e
# The peer is gone: the collectives inside save and load fail, not the file.
record save_peer_gone [list torch::optimizer_save $opt [file join $out after.pt]]
record load_peer_gone [list torch::optimizer_load $opt $good]
close $f
torch::distributed_destroy
