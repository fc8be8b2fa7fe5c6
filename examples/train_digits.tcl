# Trains the seed page's network shape (Linear-ReLU-Linear with 256 hidden
# units) on the 8x8 handwritten digits in examples/data/digits.txt, holding
# out 20% for testing: first with torch::optimizer_adafactor at its default
# options, then with torch::optimizer_adam for comparison.
#
#   TCLLIBPATH="$(.venv/bin/python -m tcltorch tcl-path)" tclsh examples/train_digits.tcl ?epochs? ?batch?
package require torch

set epochs [expr {$argc > 0 ? [lindex $argv 0] : 5}]
set batch [expr {$argc > 1 ? [lindex $argv 1] : 32}]
set here [file dirname [file normalize [info script]]]

source [file join $here digits_data.tcl]
lassign [digits::load [file join $here data digits.txt]] X y n
lassign [digits::split $X $y $n] Xtrain ytrain Xtest ytest ntrain ntest
puts "digits: $ntrain training and $ntest test samples, batch $batch, $epochs epochs"


# Trains a fresh network with the optimizer that `make` builds from a module;
# returns the final test accuracy.
proc train {name make} {
    global Xtrain ytrain Xtest ytest ntrain ntest epochs batch
    torch::manual_seed 1
    set model [torch::sequential]
    torch::add_module $model [torch::linear 64 256]
    torch::add_module $model [torch::relu]
    torch::add_module $model [torch::linear 256 10]
    set opt [{*}$make $model]
    for {set epoch 1} {$epoch <= $epochs} {incr epoch} {
        set loss [digits::train_epoch $model $opt $Xtrain $ytrain $ntrain $batch]
        set acc [digits::accuracy $model $Xtest $ytest $ntest]
        puts [format "%-9s epoch %d/%d  loss %.4f  test accuracy %.2f%%" \
                  $name $epoch $epochs $loss [expr {100 * $acc}]]
    }
    torch::delete $model $opt
    return $acc
}

set adafactor [train adafactor {torch::optimizer_adafactor -parameters}]
set adam [train adam {torch::optimizer_adam -parameters}]
puts [format "final test accuracy: adafactor %.2f%%, adam %.2f%%" \
          [expr {100 * $adafactor}] [expr {100 * $adam}]]
