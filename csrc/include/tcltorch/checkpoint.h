// Optimizer checkpoints that are complete or absent, and that change nothing
// when they are bad.
#pragma once

#include <functional>
#include <string>

#include "tcltorch/export.h"

namespace torch::optim {
class Optimizer;
}

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

// Loads a file written by save_optimizer (or torch::save) into `optimizer`
// only if all of it is valid for its parameters: it is read into a scratch
// optimizer first and each parameter's state is checked (tensors, shapes,
// finite values). Throws c10::Error otherwise, leaving `optimizer` unchanged.
TCLTORCH_API void load_optimizer(Adafactor& optimizer, const std::string& path);

}  // namespace tcltorch
