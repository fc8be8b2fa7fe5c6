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

# Each line: label, then 64 pixels in 0..16 (scaled to 0..1 here), as images
# {n 1 8 8}.
proc load_digits {file} {
    set labels {}
    set pixels {}
    set f [open $file r]
    while {[gets $f line] >= 0} {
        if {$line eq "" || [string index $line 0] eq "#"} continue
        lappend labels [lindex $line 0]
        foreach v [lrange $line 1 end] {
            lappend pixels [expr {$v / 16.0}]
        }
    }
    close $f
    set n [llength $labels]
    set flat [torch::list_to_tensor $pixels float32]
    list [torch::tensor_reshape $flat [list $n 1 8 8]] [torch::list_to_tensor $labels] $n
}

lassign [load_digits [file join $here data digits.txt]] X y n
torch::manual_seed 0
set order [torch::randperm $n]
set ntest [expr {$n / 5}]
set ntrain [expr {$n - $ntest}]
set Xtrain [torch::index_select $X 0 [torch::tensor_slice $order 0 0 $ntrain]]
set ytrain [torch::index_select $y 0 [torch::tensor_slice $order 0 0 $ntrain]]
set Xtest [torch::index_select $X 0 [torch::tensor_slice $order 0 $ntrain]]
set ytest [torch::index_select $y 0 [torch::tensor_slice $order 0 $ntrain]]
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

proc accuracy {model X y n} {
    torch::eval $model
    set logits [torch::forward $model $X]
    set pred [torch::argmax $logits 1]
    set hits [torch::sum [torch::eq $pred $y]]
    set acc [expr {double([torch::tensor_item $hits]) / $n}]
    torch::delete $logits $pred $hits
    torch::train $model
    return $acc
}

for {set epoch 1} {$epoch <= $epochs} {incr epoch} {
    set perm [torch::randperm $ntrain]
    set Xs [torch::index_select $Xtrain 0 $perm]
    set ys [torch::index_select $ytrain 0 $perm]
    set total 0.0
    set batches 0
    for {set i 0} {$i < $ntrain} {incr i $batch} {
        set xb [torch::tensor_slice $Xs 0 $i [expr {$i + $batch}]]
        set yb [torch::tensor_slice $ys 0 $i [expr {$i + $batch}]]
        torch::optimizer_zero_grad $opt
        set logits [torch::forward $model $xb]
        set loss [torch::cross_entropy_loss $logits $yb]
        torch::tensor_backward $loss
        torch::optimizer_step $opt
        set total [expr {$total + [torch::tensor_item $loss]}]
        incr batches
        torch::delete $xb $yb $logits $loss
    }
    torch::delete $perm $Xs $ys
    puts [format "epoch %d/%d  loss %.4f  test accuracy %.2f%%" $epoch $epochs \
              [expr {$total / $batches}] [expr {100 * [accuracy $model $Xtest $ytest $ntest]}]]
}

# The state of the first convolution's weight: a row and a column factor
# instead of a full second moment.
set state [torch::optimizer_state $opt]
set first [lindex [dict values [dict get $state parameters]] 0]
puts "conv weight [dict get $first shape]: Adafactor state\
      [dict map {k v} [dict remove [dict get $first state] step] {dict get $v shape}]"
puts [format "optimizer state %d bytes (Adam would keep %d)" \
          [dict get $state state_bytes] [dict get $state adam_state_bytes]]
puts [format "final test accuracy %.2f%%" [expr {100 * [accuracy $model $Xtest $ytest $ntest]}]]
