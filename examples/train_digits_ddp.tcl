# The digits example (examples/train_digits.tcl) on N ranks: data parallel
# training with a sharded Adafactor, launched by torchrun:
#
#   TCLLIBPATH=$(.venv/bin/python -m tcltorch tcl-path) \
#     .venv/bin/torchrun --nproc-per-node 2 --no-python tclsh examples/train_digits_ddp.tcl ?epochs? ?batch?
#
# Every rank reads the data and makes the same 80/20 split; each global
# batch of `batch` samples is cut into equal shares, one per rank. The
# gradients are averaged over the ranks after each backward pass, so N ranks
# train the network that 1 rank would, and each rank keeps the optimizer
# state of its share of the parameters only (-shardState 1).
package require torch

set epochs [expr {$argc > 0 ? [lindex $argv 0] : 5}]
set batch [expr {$argc > 1 ? [lindex $argv 1] : 32}]
set here [file dirname [file normalize [info script]]]

# RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT come from torchrun.
torch::distributed_init -timeout 120
set rank [torch::distributed_rank]
set world [torch::distributed_world_size]

source [file join $here digits_data.tcl]
lassign [digits::load [file join $here data digits.txt]] X y n
lassign [digits::split $X $y $n] Xtrain ytrain Xtest ytest ntrain ntest
if {$rank == 0} {
    puts "digits: $ntrain training and $ntest test samples, batch $batch, $epochs epochs, $world ranks"
}


# Each rank starts from its own weights: wrapping the network broadcasts
# rank 0's.
torch::manual_seed [expr {1 + $rank}]
set net [torch::sequential]
torch::add_module $net [torch::linear 64 256]
torch::add_module $net [torch::relu]
torch::add_module $net [torch::linear 256 10]
set model [torch::distributed_data_parallel $net]
set opt [torch::optimizer_adafactor -parameters $model -shardState 1]

for {set epoch 1} {$epoch <= $epochs} {incr epoch} {
    # The same shuffle on every rank (the generator is seeded alike).
    torch::manual_seed [expr {1000 + $epoch}]
    set loss [digits::train_epoch $model $opt $Xtrain $ytrain $ntrain $batch $rank $world]
    set acc [digits::accuracy $model $Xtest $ytest $ntest]
    if {$rank == 0} {
        puts [format "epoch %d/%d  loss %.4f (rank 0)  test accuracy %.2f%%" \
                  $epoch $epochs $loss [expr {100 * $acc}]]
    }
}
set bytes [dict get [torch::optimizer_state $opt] state_bytes]
puts [format "rank %d: optimizer state %d bytes" $rank $bytes]
torch::barrier
if {$rank == 0} {
    puts [format "final test accuracy: %.2f%%" [expr {100 * $acc}]]
}
torch::distributed_destroy
