# Data parallel with SGD from different starting weights, then Adafactor
# with -shardState 0 and 1 side by side, with a checkpoint after 3 steps.
#   torchrun --nproc-per-node 2 --no-python tclsh train_ranks.tcl outdir
source [file join [file dirname [info script]] common.tcl]
set out [lindex $argv 0]
torch::distributed_init -timeout 60
set rank [torch::distributed_rank]
set world [torch::distributed_world_size]
set f [open [file join $out rank$rank.txt] w]
lassign [local_batch $rank $world] x y

# 1. DDP + SGD, ranks starting from different weights.
torch::manual_seed [expr {100 + $rank}]
set net [make_net]
dump $f before $net
set ddp [torch::distributed_data_parallel $net -bucketCapMb 0.0002]
dump $f start $net
set sgd [torch::optimizer_sgd -parameters $ddp -lr 0.1]
for {set s 0} {$s < 5} {incr s} { train_step $ddp $sgd $x $y }
dump $f end $net

# 2. Adafactor with momentum and weight decay, unsharded and sharded.
foreach shard {0 1} {
    torch::manual_seed 7
    set n($shard) [make_net]
    set d($shard) [torch::distributed_data_parallel $n($shard)]
    set o($shard) [torch::optimizer_adafactor -parameters $d($shard) -beta1 0.9 \
                       -weightDecay 0.01 -lr 0.05 -relativeStep 0 -shardState $shard]
}
for {set s 1} {$s <= 6} {incr s} {
    foreach shard {0 1} { train_step $d($shard) $o($shard) $x $y }
    if {$s == 3} {
        # The checkpoint: collective on the sharded optimizer.
        torch::optimizer_save $o(1) [file join $out adafactor.pt]
        if {$rank == 0} { torch::module_save $n(1) [file join $out net.pt] }
        dump $f at3 $n(1)
    }
}
foreach shard {0 1} {
    dump $f adafactor$shard $n($shard)
    puts $f [list state_bytes$shard [dict get [torch::optimizer_state $o($shard)] state_bytes]]
}

# 3. Two parameter groups: the biases with their own lr and momentum and
# without weight decay, unsharded and sharded.
foreach shard {0 1} {
    torch::manual_seed 7
    set gn($shard) [make_net]
    set gd($shard) [torch::distributed_data_parallel $gn($shard)]
    lassign [torch::parameters $gn($shard)] w1 b1 w2 b2
    set go($shard) [torch::optimizer_adafactor -parameters $gd($shard) -beta1 0.9 \
        -weightDecay 0.01 -lr 0.05 -relativeStep 0 -shardState $shard \
        -groups [list [list -parameters [list $b1 $b2] -weightDecay 0 -lr 0.02 -beta1 0.5]]]
}
for {set s 1} {$s <= 4} {incr s} {
    foreach shard {0 1} { train_step $gd($shard) $go($shard) $x $y }
}
foreach shard {0 1} {
    dump $f groups$shard $gn($shard)
    puts $f [list group_bytes$shard [dict get [torch::optimizer_state $go($shard)] state_bytes]]
}
close $f
torch::distributed_destroy
