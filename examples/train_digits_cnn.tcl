# A small convolutional network trained from Tcl with Adafactor on the 8x8
# handwritten digits of examples/data/digits.txt (20% held out for testing):
# two 3x3 convolutions with ReLU and 2x2 max pooling, then a linear layer.
# The convolution weights are 4-d tensors {out in 3 3}: Adafactor factors
# their second moment over the last two dimensions, and the end of the run
# shows the state that takes next to what Adam would keep.
#
#   TCLLIBPATH=$(.venv/bin/python -m tcltorch tcl-path) tclsh examples/train_digits_cnn.tcl ?epochs? ?batch?
package require torch

set epochs [expr {$argc > 0 ? [lindex $argv 0] : 8}]
set batch [expr {$argc > 1 ? [lindex $argv 1] : 32}]
set here [file dirname [file normalize [info script]]]

# The images as {n 1 8 8}.
source [file join $here digits_data.tcl]
lassign [digits::load [file join $here data digits.txt] {1 8 8}] X y n
lassign [digits::split $X $y $n] Xtrain ytrain Xtest ytest ntrain ntest
puts "digits CNN: $ntrain training and $ntest test images, batch $batch, $epochs epochs"

torch::manual_seed 1
set model [torch::sequential [list \
    [torch::conv2d 1 16 3 1 1] [torch::relu] [torch::max_pool2d 2] \
    [torch::conv2d 16 32 3 1 1] [torch::relu] [torch::max_pool2d 2] \
    [torch::flatten] [torch::linear 128 10]]]
dict for {name p} [torch::named_parameters $model] {
    puts [format "  %-9s %s" $name [torch::tensor_shape $p]]
}
set opt [torch::optimizer_adafactor -parameters $model]


for {set epoch 1} {$epoch <= $epochs} {incr epoch} {
    set loss [digits::train_epoch $model $opt $Xtrain $ytrain $ntrain $batch]
    puts [format "epoch %d/%d  loss %.4f  test accuracy %.2f%%" $epoch $epochs \
              $loss [expr {100 * [digits::accuracy $model $Xtest $ytest $ntest]}]]
}

# The state of the first convolution's weight: a row and a column factor
# instead of a full second moment.
set state [torch::optimizer_state $opt]
set first [lindex [dict values [dict get $state parameters]] 0]
puts "conv weight [dict get $first shape]: Adafactor state\
      [dict map {k v} [dict remove [dict get $first state] step] {dict get $v shape}]"
puts [format "optimizer state %d bytes (Adam would keep %d)" \
          [dict get $state state_bytes] [dict get $state adam_state_bytes]]
puts [format "final test accuracy %.2f%%" [expr {100 * [digits::accuracy $model $Xtest $ytest $ntest]}]]
