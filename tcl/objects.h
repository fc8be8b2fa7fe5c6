// What module and optimizer handles hold. Heavy LibTorch includes: only the
// command files include this.
#pragma once

#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/optim/optimizer.h>

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
  std::string type;  // "adafactor", ...
  std::unique_ptr<torch::optim::Optimizer> optimizer;
};

}  // namespace tcltorch::tcl
