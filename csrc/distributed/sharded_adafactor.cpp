// ZeRO stage 1 around tcltorch::Adafactor's own step: the parameters another
// rank owns have their gradients hidden during the step, so Adafactor::step
// (the same code as unsharded) creates and advances state for this rank's
// share only; then each rank's share is broadcast from it.
#include "tcltorch/sharded_adafactor.h"

#include <ATen/ATen.h>
#include <torch/serialize/archive.h>

#include <map>

#include "error_util.h"
#include "tcltorch/step_in_backward.h"

namespace tcltorch::distributed {

namespace {

std::vector<at::Tensor> all_params(const torch::optim::Optimizer& o) {
  std::vector<at::Tensor> out;
  for (const auto& g : o.param_groups()) {
    for (const auto& p : g.params()) out.push_back(p);
  }
  return out;
}

// The optimizer's parameter groups, each with a copy of its options.
std::vector<torch::optim::OptimizerParamGroup> groups_of(const torch::optim::Optimizer& o) {
  return {o.param_groups().begin(), o.param_groups().end()};
}

const AdafactorOptions& defaults_of(const torch::optim::Optimizer& o) {
  return static_cast<const AdafactorOptions&>(o.defaults());
}

// The state tensors of one parameter, in a fixed order.
std::vector<at::Tensor*> state_fields(AdafactorParamState& s) {
  return {&s.step(), &s.row_var(), &s.col_var(), &s.variance(), &s.exp_avg()};
}

}  // namespace

ShardedAdafactor::ShardedAdafactor(std::shared_ptr<ProcessGroup> group,
                                   std::vector<torch::Tensor> params, AdafactorOptions defaults)
    : ShardedAdafactor(std::move(group), {torch::optim::OptimizerParamGroup(std::move(params))},
                       std::move(defaults)) {}

ShardedAdafactor::ShardedAdafactor(
    std::shared_ptr<ProcessGroup> group,
    const std::vector<torch::optim::OptimizerParamGroup>& param_groups, AdafactorOptions defaults)
    : Adafactor(param_groups, std::move(defaults)), group_(std::move(group)) {
  if (!group_) throw Error("STATE", "sharded Adafactor: no process group");
  owners_ = partition_by_bytes(all_params(*this), group_->world_size());
}

void ShardedAdafactor::set_step_in_backward(bool on, std::int64_t accumulate_steps) {
  TORCH_CHECK_VALUE(!on, step_in_backward_conflict(StepInBackwardConflict::ShardedState));
  Adafactor::set_step_in_backward(false, accumulate_steps);
}

torch::Tensor ShardedAdafactor::step(LossClosure closure) {
  const auto params = all_params(*this);
  torch::Tensor loss;
  {
    // Hide the gradients of the parameters other ranks own; put them back
    // whatever happens.
    std::vector<std::pair<at::Tensor, at::Tensor>> hidden;
    struct Restore {
      std::vector<std::pair<at::Tensor, at::Tensor>>& hidden;
      ~Restore() {
        for (auto& [p, g] : hidden) p.mutable_grad() = g;
      }
    } restore{hidden};
    if (closure) {
      at::AutoGradMode enable_grad(true);
      loss = closure();
    }
    for (std::size_t i = 0; i < params.size(); ++i) {
      if (owners_[i] != group_->rank() && params[i].grad().defined()) {
        auto p = params[i];
        hidden.emplace_back(p, p.grad());
        p.mutable_grad() = at::Tensor();
      }
    }
    Adafactor::step();
  }
  // Every rank's share from it, in flat buffers of up to DDP's bucket size
  // (per dtype): few messages, and no copy of a whole share at once.
  for (int r = 0; r < group_->world_size(); ++r) {
    std::map<at::ScalarType, std::vector<at::Tensor>> share;
    for (std::size_t i = 0; i < params.size(); ++i) {
      if (owners_[i] == r) share[params[i].scalar_type()].push_back(params[i]);
    }
    for (auto& [dtype, tensors] : share) {
      broadcast_coalesced(*group_, tensors, r, kDefaultBucketBytes);
    }
  }
  return loss;
}

std::int64_t ShardedAdafactor::local_state_bytes() const {
  std::int64_t bytes = 0;
  for (const auto& [key, state] : state()) {
    auto& s = const_cast<AdafactorParamState&>(static_cast<const AdafactorParamState&>(*state));
    for (at::Tensor* t : state_fields(s)) {
      if (t->defined()) bytes += t->numel() * t->element_size();
    }
  }
  return bytes;
}

void ShardedAdafactor::save(torch::serialize::OutputArchive& archive) const {
  const auto params = all_params(*this);
  // The options of each parameter's group.
  std::vector<const AdafactorOptions*> options_by_param;
  for (const auto& g : param_groups()) {
    for (std::size_t k = 0; k < g.params().size(); ++k) {
      options_by_param.push_back(&static_cast<const AdafactorOptions&>(g.options()));
    }
  }
  Adafactor full(groups_of(*this), defaults_of(*this));
  c10::NoGradGuard no_grad;
  for (std::size_t i = 0; i < params.size(); ++i) {
    const int owner = owners_[i];
    const auto& p = params[i];
    const auto& options = *options_by_param[i];
    auto it = state().find(p.unsafeGetTensorImpl());
    at::Tensor has = at::zeros({1}, at::kLong);
    if (owner == group_->rank() && it != state().end()) has.fill_(1);
    group_->broadcast(has, owner);
    if (has.item<std::int64_t>() == 0) continue;
    auto s = std::make_unique<AdafactorParamState>();
    if (owner == group_->rank()) {
      s = std::make_unique<AdafactorParamState>(static_cast<const AdafactorParamState&>(*it->second));
      for (at::Tensor* t : state_fields(*s)) {
        if (t->defined()) *t = t->clone();
      }
    } else {
      // Same shapes and dtypes as the owner's: made from the same
      // parameter and options.
      adafactor_init_state(p, options, *s);
    }
    for (at::Tensor* t : state_fields(*s)) {
      if (t->defined()) group_->broadcast(*t, owner);
    }
    full.state()[p.unsafeGetTensorImpl()] = std::move(s);
  }
  full.save(archive);
}

void ShardedAdafactor::load(torch::serialize::InputArchive& archive) {
  const auto params = all_params(*this);
  Adafactor full(groups_of(*this), defaults_of(*this));
  full.load(archive);
  state().clear();
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (owners_[i] != group_->rank()) continue;
    auto key = params[i].unsafeGetTensorImpl();
    auto it = full.state().find(key);
    if (it != full.state().end()) state()[key] = std::move(it->second);
  }
  for (std::size_t g = 0; g < param_groups().size(); ++g) {
    param_groups()[g].set_options(full.param_groups()[g].options().clone());
  }
}

}  // namespace tcltorch::distributed
