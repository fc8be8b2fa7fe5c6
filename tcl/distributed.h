// What other command files call of the distributed commands (light header).
#pragma once

#include "tcl_compat.h"

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "registry.h"

namespace tcltorch {
struct AdafactorOptions;
}
namespace torch::optim {
class Optimizer;
}

namespace tcltorch::tcl {

// torch::optimizer_adafactor -shardState 1: registers a sharded Adafactor
// over these parameter groups (each with its options; `defaults` the
// command's) on this interpreter's process group and sets its handle as the
// result (or an error {TORCH DISTRIBUTED STATE} without one).
int sharded_adafactor_result(
    Registry& registry, Tcl_Interp* interp,
    const std::vector<std::pair<std::vector<at::Tensor>, AdafactorOptions>>& groups,
    const AdafactorOptions& defaults);

// torch::optimizer_load on a sharded optimizer: the ranks tell each other
// whether each could load the file (`error` unset: it could), so that all
// take it or none does; a rank that could sees `error` set naming the ranks
// that could not. Not sharded: nothing to do. A failed collective is an error
// {TORCH DISTRIBUTED code}, its message after `what`.
int sharded_load_agreed(Tcl_Interp* interp, const torch::optim::Optimizer& optimizer,
                        const std::string& what, std::optional<std::string>& error);

}  // namespace tcltorch::tcl
