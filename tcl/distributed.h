// What other command files call of the distributed commands (light header).
#pragma once

#include "tcl_compat.h"

#include <ATen/core/Tensor.h>

#include <vector>

#include "registry.h"

namespace tcltorch {
struct AdafactorOptions;
}

namespace tcltorch::tcl {

// torch::optimizer_adafactor -shardState 1: registers a sharded Adafactor on
// this interpreter's process group and sets its handle as the result (or an
// error {TORCH DISTRIBUTED STATE} without one).
int sharded_adafactor_result(Registry& registry, Tcl_Interp* interp,
                             const std::vector<at::Tensor>& params,
                             const AdafactorOptions& options);

}  // namespace tcltorch::tcl
