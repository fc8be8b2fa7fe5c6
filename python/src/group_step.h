// tcltorch._C.GroupStepper: tcltorch.Adafactor's step in one call (group_step.cpp).
#pragma once

#include <torch/csrc/utils/pybind.h>

namespace tcltorch::python {

// Adds the class GroupStepper to the module.
void def_group_step(pybind11::module_& m);

}  // namespace tcltorch::python
