# One plain process: loads the 2-rank checkpoint into an unsharded Adafactor
# and into a sharded one on a 1-rank group, and takes steps 4..6 on the
# full batch.
#   tclsh resume.tcl outdir port
source [file join [file dirname [info script]] common.tcl]
lassign $argv out port
set f [open [file join $out resume.txt] w]
lassign [full_batch] x y
torch::distributed_init -rank 0 -worldSize 1 -masterAddr 127.0.0.1 -masterPort $port -timeout 30
foreach shard {0 1} {
    torch::manual_seed 999
    set n($shard) [make_net]
    torch::module_load $n($shard) [file join $out net.pt]
    set o($shard) [torch::optimizer_adafactor -parameters $n($shard) -beta1 0.9 \
                       -weightDecay 0.01 -lr 0.05 -relativeStep 0 -shardState $shard]
    torch::optimizer_load $o($shard) [file join $out adafactor.pt]
    puts $f [list loaded$shard [dict get [torch::optimizer_state $o($shard)] state_bytes]]
    for {set s 4} {$s <= 6} {incr s} { train_step $n($shard) $o($shard) $x $y }
    dump $f resumed$shard $n($shard)
}
close $f
torch::distributed_destroy
