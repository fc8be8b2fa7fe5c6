# tclsh scripts/tcl_has_package.tcl NAME: exits 0 if `package require NAME`
# works in this tclsh, 1 (with Tcl's message on stderr) if it does not.
if {[llength $argv] != 1} {
    puts stderr "usage: tclsh tcl_has_package.tcl NAME"
    exit 2
}
if {[catch {package require [lindex $argv 0]} msg]} {
    puts stderr $msg
    exit 1
}
exit 0
