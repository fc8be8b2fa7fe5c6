// Conversions between Tcl values and tensors shared by the command files.
#pragma once

#include "tcl_compat.h"

#include <ATen/core/Tensor.h>

#include "registry.h"

#include <cstdint>
#include <string>
#include <vector>

namespace tcltorch::tcl {

// Names accepted for -dtype, nullptr-terminated (for ArgSpec::choices).
extern const char* const kDtypeNames[];
c10::ScalarType dtype_from_name(const std::string& name);
const char* dtype_name(c10::ScalarType dtype);

// A shape: a Tcl list of non-negative integers. Errors name `option`.
int get_shape(Tcl_Interp* interp, const char* option, Tcl_Obj* value,
              std::vector<std::int64_t>& shape);

// Nested Tcl lists of the tensor's values (a scalar for a 0-d tensor).
Tcl_Obj* tensor_to_list(const at::Tensor& tensor);

// Registers a tensor and sets its handle as the result.
int tensor_result(Registry& registry, Tcl_Interp* interp, at::Tensor tensor);

}  // namespace tcltorch::tcl
