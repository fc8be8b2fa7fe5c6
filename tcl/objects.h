// What module and optimizer handles hold. Heavy LibTorch includes: only the
// command files include this.
#pragma once

#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/optim/optimizer.h>

#include <functional>
#include <memory>
#include <string>

namespace tcltorch::tcl {

// nn::Sequential's forward is a template, which AnyModule cannot hold; this
// one takes and returns a tensor, so sequentials nest and run from Tcl.
class TclSequentialImpl : public torch::nn::SequentialImpl {
 public:
  using SequentialImpl::SequentialImpl;
  at::Tensor forward(at::Tensor input) {
    return SequentialImpl::forward(std::move(input));
  }
};
TORCH_MODULE(TclSequential);

struct ModuleEntry {
  std::string type;  // "linear", "relu", "sequential", ...
  torch::nn::AnyModule module;
};

struct OptimizerEntry {
  std::string type;  // "adafactor", "adam", "adamw", "sgd"
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  // A new optimizer of the same kind, parameters and options, with no
  // state: loading goes into one of these first, so a bad file changes
  // nothing.
  std::function<std::unique_ptr<torch::optim::Optimizer>()> make_fresh;
  // torch::optimizer_step warns once per optimizer about a step that finds
  // no gradient at all.
  bool warned_no_gradients = false;
};

}  // namespace tcltorch::tcl
