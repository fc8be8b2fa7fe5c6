# Rank 1 leaves after the first collective; rank 0's next one must fail
# within the timeout.
#   torchrun --nproc-per-node 2 --no-python tclsh early_exit.tcl outdir
package require torch
set out [lindex $argv 0]
torch::distributed_init -timeout 5
set rank [torch::distributed_rank]
set t [torch::tensor_create {1.0 2.0}]
torch::all_reduce $t
if {$rank == 1} { exit 0 }
after 500
set start [clock milliseconds]
set rc [catch {torch::all_reduce $t; torch::all_reduce $t} msg opts]
set elapsed [expr {[clock milliseconds] - $start}]
set f [open [file join $out early.txt] w]
puts $f [list $rc [dict get $opts -errorcode] $elapsed $msg]
close $f
torch::distributed_destroy
