# Runs every tests/tcl/*.test file, each in its own tclsh, with tcltest.
#
#   TCLLIBPATH="$(.venv/bin/python -m tcltorch tcl-path)" tclsh tests/tcl/all.tcl ?tcltest options?
#
# e.g. `-file adafactor.test` for one file, `-match adafactor-error-*` for some
# tests, `-verbose bpe` for every test's name and result. The exit status is 1
# when any test failed.
package require Tcl 8.6-
package require tcltest 2.5
namespace import ::tcltest::*

configure -testdir [file dirname [file normalize [info script]]] {*}$argv
# A skipped test is a test that did not run: say so in the status.
set failed [runAllTests]
exit [expr {$failed ? 1 : 0}]
