// The bridge from Python (tcltorch._C) to the handles of a Tcl interpreter
// that has loaded the package: tcltorch.tcl.Interp.tensor() and friends.
// No Tcl headers here: the Python module only passes the Tcl_Interp pointer
// that tkinter reports. Call these on the thread that owns the interpreter.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

struct Tcl_Interp;

#define TCLTORCH_TCL_API __attribute__((visibility("default")))

namespace tcltorch::tcl {

bool stubs_ready();

// The tensor behind `handle` (the same tensor, sharing memory and autograd
// state). Throws std::invalid_argument with a message naming the handle.
TCLTORCH_TCL_API at::Tensor bridge_get_tensor(Tcl_Interp* interp,
                                              const std::string& handle);

// Registers `tensor` in the interpreter and returns its handle.
TCLTORCH_TCL_API std::string bridge_add_tensor(Tcl_Interp* interp,
                                               const at::Tensor& tensor);

}  // namespace tcltorch::tcl
