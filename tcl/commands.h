// How command files hand their commands to the package: each file exports a
// table of (name, implementation); package.cpp registers them all behind one
// trampoline that finds the interpreter's registry and guards against C++
// exceptions.
#pragma once

#include "tcl_compat.h"

#include <vector>

#include "registry.h"

namespace tcltorch::tcl {

using CommandFn = int (*)(Registry& registry, Tcl_Interp* interp, int objc,
                          Tcl_Obj* const objv[]);

struct CommandDef {
  const char* name;  // fully qualified
  CommandFn fn;
};

const std::vector<CommandDef>& tensor_commands();
const std::vector<CommandDef>& module_commands();
const std::vector<CommandDef>& optimizer_commands();
const std::vector<CommandDef>& math_commands();
const std::vector<CommandDef>& nn_commands();        // commands_nn.cpp
const std::vector<CommandDef>& training_commands();  // commands_training.cpp
const std::vector<CommandDef>& distributed_commands();

// Sets the interpreter result to a string.
inline int ok(Tcl_Interp* interp, const std::string& result) {
  Tcl_SetObjResult(interp, Tcl_NewStringObj(result.data(),
                                            static_cast<int>(result.size())));
  return TCL_OK;
}

}  // namespace tcltorch::tcl
