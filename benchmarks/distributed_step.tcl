# The sharded Adafactor step (torch::optimizer_adafactor -shardState 1) on
# the parameter set given as "count*RxC+count*N...", timed on each rank:
#   torchrun --nproc-per-node N --no-python tclsh benchmarks/distributed_step.tcl spec steps out
# Each rank writes one line to out.rankR: rank, world, median step seconds,
# state bytes held on this rank. A step includes the broadcast of the
# updated parameters from their owners.
package require torch
lassign $argv spec steps out
torch::distributed_init -timeout 600
set rank [torch::distributed_rank]
set world [torch::distributed_world_size]
torch::manual_seed 0
set params {}
foreach part [split $spec +] {
    lassign [split $part *] count shape
    for {set i 0} {$i < $count} {incr i} {
        set p [torch::randn [split $shape x]]
        torch::tensor_requires_grad $p 1
        # A fixed gradient: d/dp sum(p * g) = g.
        set g [torch::randn [split $shape x]]
        torch::tensor_backward [torch::sum [torch::mul $p $g]]
        lappend params $p
    }
}
set opt [torch::optimizer_adafactor -parameters $params -shardState 1 -beta1 0.9]
torch::optimizer_step $opt   ;# creates the state
set times {}
for {set s 0} {$s < $steps} {incr s} {
    torch::barrier
    set t0 [clock microseconds]
    torch::optimizer_step $opt
    lappend times [expr {([clock microseconds] - $t0) / 1e6}]
}
set times [lsort -real $times]
set median [lindex $times [expr {[llength $times] / 2}]]
set bytes [dict get [torch::optimizer_state $opt] state_bytes]
set f [open $out.rank$rank w]
puts $f [list $rank $world $median $bytes]
close $f
torch::distributed_destroy
