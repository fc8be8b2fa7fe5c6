# Trains the seed page's network (784-256-10 with ReLU) with
# torch::optimizer_adafactor on a fixed synthetic batch and prints the loss.
#
#   TCLLIBPATH="$(.venv/bin/python -m tcltorch tcl-path)" tclsh examples/train_mlp.tcl ?steps?
package require torch

set steps [expr {$argc > 0 ? [lindex $argv 0] : 20}]
set batch 256
torch::manual_seed 0
expr {srand(0)}

# Data: random inputs and random class labels the network has to fit.
set x [torch::randn [list $batch 784]]
set labels {}
for {set i 0} {$i < $batch} {incr i} {
    lappend labels [expr {int(rand() * 10)}]
}
set y [torch::tensor_create $labels {} int64]

# The network of the seed page's third example.
set model [torch::sequential]
torch::add_module $model [torch::linear 784 256]
torch::add_module $model [torch::relu]
torch::add_module $model [torch::linear 256 10]

set opt [torch::optimizer_adafactor -parameters $model -lr 0.8]

for {set step 1} {$step <= $steps} {incr step} {
    torch::optimizer_zero_grad $opt
    set logits [torch::forward $model $x]
    set loss [torch::cross_entropy_loss $logits $y]
    torch::tensor_backward $loss
    torch::optimizer_step $opt
    puts [format "step %3d  loss %.4f" $step [torch::tensor_item $loss]]
    # Per-step tensors are freed at once; the model and data stay.
    torch::delete $logits $loss
}
