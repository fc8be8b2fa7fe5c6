# Shared by the distributed Tcl workers of tests/test_tcl_distributed.py.
package require torch

# The full batch: 8 rows of 4 inputs and 2 targets from a fixed formula.
proc full_batch {} {
    set xs {}
    set ys {}
    for {set i 0} {$i < 8} {incr i} {
        for {set j 0} {$j < 4} {incr j} { lappend xs [expr {sin($i * 4 + $j + 1)}] }
        lappend ys [expr {cos($i)}] [expr {sin(2 * $i)}]
    }
    list [torch::tensor_create $xs {8 4}] [torch::tensor_create $ys {8 2}]
}

# This rank's equal share of the rows.
proc local_batch {rank world} {
    lassign [full_batch] x y
    set n [expr {8 / $world}]
    set start [expr {$rank * $n}]
    list [torch::tensor_slice $x 0 $start [expr {$start + $n}]] \
         [torch::tensor_slice $y 0 $start [expr {$start + $n}]]
}

proc make_net {} {
    torch::sequential [list [torch::linear 4 8] [torch::tanh] [torch::linear 8 2]]
}

proc train_step {module opt x y} {
    torch::optimizer_zero_grad $opt
    set out [torch::forward $module $x]
    set loss [torch::mse_loss $out $y]
    torch::tensor_backward $loss
    torch::optimizer_step $opt
    set value [torch::tensor_item $loss]
    torch::delete $out $loss
    return $value
}

# One line per record: name, then the parameters' values as nested lists
# (17 significant digits: float32 values exactly).
proc dump {f name module} {
    puts $f [list $name [lmap p [torch::parameters $module] {torch::tensor_to_list $p}]]
}
