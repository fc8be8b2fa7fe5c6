#include "tcltorch/checkpoint.h"

#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>
#include <torch/serialize.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "tcltorch/adafactor.h"

namespace tcltorch {

void write_atomically(const std::string& path,
                      const std::function<void(const std::string& tmp)>& write) {
  static std::atomic<unsigned> counter{0};
  const std::string tmp = path + ".tmp-" + std::to_string(getpid()) + "-" +
                          std::to_string(counter.fetch_add(1));
  try {
    write(tmp);
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string reason = std::strerror(errno);
    std::remove(tmp.c_str());
    TORCH_CHECK(false, "cannot write \"", path, "\": ", reason);
  }
}

void save_optimizer(const torch::optim::Optimizer& optimizer, const std::string& path) {
  write_atomically(path, [&](const std::string& tmp) { torch::save(optimizer, tmp); });
}

std::vector<std::pair<std::string, at::Tensor>> optimizer_state_tensors(
    const torch::optim::OptimizerParamState& state, double& step) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  auto add = [&](const char* name, const at::Tensor& t) {
    if (t.defined()) out.emplace_back(name, t);
  };
  step = 0;
  if (auto* s = dynamic_cast<const AdafactorParamState*>(&state)) {
    step = s->step().defined() ? s->step().item<double>() : 0;
    add("step", s->step());
    add("row_var", s->row_var());
    add("col_var", s->col_var());
    add("variance", s->variance());
    add("exp_avg", s->exp_avg());
  } else if (auto* s = dynamic_cast<const torch::optim::AdamParamState*>(&state)) {
    step = static_cast<double>(s->step());
    add("exp_avg", s->exp_avg());
    add("exp_avg_sq", s->exp_avg_sq());
    add("max_exp_avg_sq", s->max_exp_avg_sq());
  } else if (auto* s = dynamic_cast<const torch::optim::AdamWParamState*>(&state)) {
    step = static_cast<double>(s->step());
    add("exp_avg", s->exp_avg());
    add("exp_avg_sq", s->exp_avg_sq());
    add("max_exp_avg_sq", s->max_exp_avg_sq());
  } else if (auto* s = dynamic_cast<const torch::optim::SGDParamState*>(&state)) {
    add("momentum_buffer", s->momentum_buffer());
  }
  return out;
}

void check_loaded_state(const torch::optim::Optimizer& optimizer) {
  for (const auto& group : optimizer.param_groups()) {
    for (const auto& p : group.params()) {
      auto it = optimizer.state().find(p.unsafeGetTensorImpl());
      if (it == optimizer.state().end()) continue;
      auto* adafactor = dynamic_cast<const AdafactorParamState*>(it->second.get());
      if (adafactor) {
        adafactor_check_state(p, *adafactor, static_cast<const AdafactorOptions&>(group.options()));
      }
      double step = 0;
      for (const auto& [name, t] : optimizer_state_tensors(*it->second, step)) {
        TORCH_CHECK(adafactor || t.sizes() == p.sizes(), "state \"", name, "\" has shape ",
                    t.sizes(), " but its parameter has shape ", p.sizes());
        // A damaged payload can still parse: state is never infinite or NaN.
        TORCH_CHECK(at::isfinite(t).all().item<bool>(), "state \"", name,
                    "\" holds infinite or NaN values (a damaged file?)");
      }
      TORCH_CHECK(std::isfinite(step) && step >= 0, "state step ", step, " is not a count");
    }
  }
}

void load_optimizer(Adafactor& optimizer, const std::string& path) {
  std::vector<torch::optim::OptimizerParamGroup> groups;
  for (const auto& g : optimizer.param_groups()) groups.emplace_back(g);
  Adafactor scratch(groups, static_cast<const AdafactorOptions&>(optimizer.defaults()));
  torch::load(scratch, path);
  check_loaded_state(scratch);
  // All checked: take it.
  optimizer.state() = std::move(scratch.state());
  for (std::size_t i = 0; i < optimizer.param_groups().size(); ++i) {
    optimizer.param_groups()[i].set_options(scratch.param_groups()[i].options().clone());
  }
}

}  // namespace tcltorch
