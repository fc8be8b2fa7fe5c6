// Optimizer checkpoints that are complete or absent, and that change nothing
// when they are bad.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "tcltorch/export.h"

namespace torch::optim {
class Optimizer;
class OptimizerParamState;
}  // namespace torch::optim

namespace tcltorch {

class Adafactor;

// Calls write(tmp) for a temporary file beside `path`, then renames it over
// `path`: a failure (an exception from `write`, a full disk) leaves `path` as
// it was and removes the temporary.
TCLTORCH_API void write_atomically(const std::string& path,
                                   const std::function<void(const std::string& tmp)>& write);

// torch::save(optimizer, path), atomically.
TCLTORCH_API void save_optimizer(const torch::optim::Optimizer& optimizer,
                                 const std::string& path);

// The state tensors of one parameter, by name, for tcltorch::Adafactor and
// LibTorch's Adam, AdamW and SGD (none for other optimizers); `step` is set
// to the parameter's step count (0 where there is none).
TCLTORCH_API std::vector<std::pair<std::string, at::Tensor>> optimizer_state_tensors(
    const torch::optim::OptimizerParamState& state, double& step);

// Checks the state an optimizer holds for each of its parameters, as loading
// must: for Adafactor, adafactor_check_state; for the others, tensors of the
// parameter's shape; for all, finite values and a step count that is one.
// Throws c10::Error on the first problem.
TCLTORCH_API void check_loaded_state(const torch::optim::Optimizer& optimizer);

// Loads a file written by save_optimizer (or torch::save) into `optimizer`
// only if all of it is valid for its parameters: it is read into a scratch
// optimizer first and checked with check_loaded_state. Throws c10::Error otherwise, leaving `optimizer` unchanged.
TCLTORCH_API void load_optimizer(Adafactor& optimizer, const std::string& path);

}  // namespace tcltorch
