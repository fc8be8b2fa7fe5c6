// The Tcl arguments of torch::optimizer_adafactor's Adafactor options,
// derived from the core's table (tcltorch/adafactor_options.h): names
// (camelCase and snake_case), types, rules, choices, the legacy positional
// order, and the Tcl door's own spellings (-decayRate, -beta1 -1) and
// defaults. No LibTorch here.
#pragma once

#include <utility>
#include <vector>

#include "argspec.h"
#include "tcltorch/adafactor_options.h"

namespace tcltorch::tcl {

// `leading` (e.g. -parameters), then one argument per option of the table in
// its order, then `trailing` (door-level options such as -groups).
CommandSpec adafactor_command_spec(const char* name, std::vector<ArgSpec> leading,
                                   std::vector<ArgSpec> trailing = {});

// The core value of every option of the table, in its order.
using AdafactorSettings = std::vector<std::pair<const AdafactorOptionInfo*, OptionValue>>;

// Resolves every option from parsed arguments, most specific first: the
// first of `layers` that gave it (e.g. a group's, then the command's), else
// the Tcl command's own default, else the default of the variant so
// resolved. Checks the rules between options in Tcl's words. Returns
// TCL_ERROR with a message in the interpreter.
int adafactor_settings(Tcl_Interp* interp, const std::vector<const Args*>& layers,
                       AdafactorSettings& out);

}  // namespace tcltorch::tcl
