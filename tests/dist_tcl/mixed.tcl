# The Tcl rank of a mixed job (see mixed.sh and mixed.py).
source [file join [file dirname [info script]] common.tcl]
set out [lindex $argv 0]
torch::distributed_init -timeout 60
set rank [torch::distributed_rank]
lassign [local_batch $rank [torch::distributed_world_size]] x y
torch::manual_seed 100
set net [make_net]
set ddp [torch::distributed_data_parallel $net]
set opt [torch::optimizer_adafactor -parameters $ddp -beta1 0.9 -weightDecay 0.01 -lr 0.05 \
             -relativeStep 0]
set f [open [file join $out mixed$rank.txt] w]
dump $f start $net
for {set s 0} {$s < 4} {incr s} { train_step $ddp $opt $x $y }
dump $f end $net
close $f
torch::distributed_destroy
