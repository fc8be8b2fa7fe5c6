# The 8x8 handwritten digits of examples/data/digits.txt, as the digits
# examples use them: loaded, split 80/20 the same way in every example (and on
# every rank), trained on an epoch at a time, and scored. Sourced by
# train_digits.tcl, train_digits_cnn.tcl and train_digits_ddp.tcl.
namespace eval digits {}

# Each line of `file`: a label, then 64 pixels in 0..16 (scaled to 0..1).
# Returns {X y n}: X a float32 tensor of shape {n {*}$shape}, y the int64
# labels.
proc digits::load {file {shape {64}}} {
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
    set X [torch::tensor_reshape $flat [list $n {*}$shape]]
    torch::delete $flat
    list $X [torch::list_to_tensor $labels] $n
}

# A fixed random 80/20 split (seed 0): returns
# {Xtrain ytrain Xtest ytest ntrain ntest}.
proc digits::split {X y n} {
    torch::manual_seed 0
    set order [torch::randperm $n]
    set ntest [expr {$n / 5}]
    set ntrain [expr {$n - $ntest}]
    set train [torch::tensor_slice $order 0 0 $ntrain]
    set test [torch::tensor_slice $order 0 $ntrain]
    set parts [list [torch::index_select $X 0 $train] [torch::index_select $y 0 $train] \
                    [torch::index_select $X 0 $test] [torch::index_select $y 0 $test] \
                    $ntrain $ntest]
    torch::delete $order $train $test
    return $parts
}

# The fraction of the n samples of X that `model` labels as y, in eval mode.
proc digits::accuracy {model X y n} {
    torch::eval $model
    set logits [torch::forward $model $X]
    set pred [torch::argmax $logits 1]
    set hits [torch::sum [torch::eq $pred $y]]
    set acc [expr {double([torch::tensor_item $hits]) / $n}]
    torch::delete $logits $pred $hits
    torch::train $model
    return $acc
}

# One epoch of minibatch training over a fresh shuffle of the n samples of X:
# zero_grad, forward, cross-entropy, backward and step per batch of `batch`.
# With `world` > 1 each rank trains on its own equal share of every global
# batch (its gradients averaged by a data parallel `model`); every rank must
# then draw the same shuffle (seed the generator alike before calling).
# Returns the mean loss over this rank's batches.
proc digits::train_epoch {model opt X y n batch {rank 0} {world 1}} {
    set perm [torch::randperm $n]
    set Xs [torch::index_select $X 0 $perm]
    set ys [torch::index_select $y 0 $perm]
    set total 0.0
    set batches 0
    for {set i 0} {$i < $n} {incr i $batch} {
        set share [expr {min($batch, $n - $i) / $world}]
        if {$share == 0} break
        set start [expr {$i + $rank * $share}]
        set xb [torch::tensor_slice $Xs 0 $start [expr {$start + $share}]]
        set yb [torch::tensor_slice $ys 0 $start [expr {$start + $share}]]
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
    return [expr {$total / $batches}]
}
