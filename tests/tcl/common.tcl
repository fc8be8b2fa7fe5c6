# Shared by the tests/tcl/*.test files: the package, and helpers.
package require tcltest 2.5
namespace import ::tcltest::*
package require torch

# The result of a script that must fail: {message errorcode}.
proc failure {script} {
    if {![catch {uplevel 1 $script} message options]} {
        return -code error "expected an error, got \"$message\""
    }
    list $message [dict get $options -errorcode]
}

# The values of a tensor as one flat list.
proc values {t} {
    set flat [torch::tensor_reshape $t -1]
    set out [torch::tensor_to_list $flat]
    torch::delete $flat
    return $out
}

# Whether every number in `list` is within `tol` of `expected`.
proc all_near {list expected tol} {
    foreach v $list {
        if {abs($v - $expected) > $tol} { return 0 }
    }
    return 1
}

# Runs `script` in a child tclsh (the package on the same TCLLIBPATH, done
# `package require torch`) and returns {stdout stderr}: for the package's
# warnings, which go to the process's standard error (a test file itself
# must write nothing there: tcltest counts that as a failing file).
proc child {script} {
    set file [makeFile "package require torch\n$script\n" child[incr ::child_count].tcl]
    set err [file rootname $file].err
    set out [exec [info nameofexecutable] $file 2> $err]
    set f [open $err]
    set text [read $f]
    close $f
    file delete $err
    removeFile $file
    list $out $text
}
set ::child_count 0
