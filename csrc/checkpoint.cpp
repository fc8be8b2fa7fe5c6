#include "tcltorch/checkpoint.h"

#include <torch/optim/adam.h>
#include <torch/optim/serialize.h>
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
#include "tcltorch/adafactor_checkpoint.h"

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

AdafactorCheckpoint read_adafactor_checkpoint(const std::string& path) {
  torch::serialize::InputArchive archive;
  archive.load_from(path);
  // LibTorch's own reader of optimizer archives (what Optimizer::load does
  // before matching saved keys to live parameters): state by the saved
  // parameters' keys, and each group's keys in order with its options.
  torch::serialize::InputArchive state_archive;
  archive.read("state", state_archive);
  ska::flat_hash_map<void*, std::unique_ptr<torch::optim::OptimizerParamState>> saved_state;
  torch::optim::detail::serialize<AdafactorParamState>(state_archive, saved_state);
  torch::serialize::InputArchive groups_archive;
  archive.read("param_groups", groups_archive);
  std::vector<std::pair<std::vector<std::string>, std::unique_ptr<torch::optim::OptimizerOptions>>>
      saved_groups;
  torch::optim::detail::serialize<AdafactorOptions>(groups_archive, saved_groups);
  AdafactorCheckpoint out;
  std::int64_t index = 0;
  for (auto& [keys, options] : saved_groups) {
    out.groups.push_back({static_cast<std::int64_t>(keys.size()),
                          static_cast<const AdafactorOptions&>(*options)});
    for (const auto& key : keys) {
      auto it = saved_state.find(reinterpret_cast<void*>(std::stoull(key)));
      if (it != saved_state.end()) {
        out.state.emplace(index, static_cast<const AdafactorParamState&>(*it->second));
      }
      ++index;
    }
  }
  return out;
}

void write_adafactor_checkpoint(const AdafactorCheckpoint& checkpoint, const std::string& path) {
  TORCH_CHECK(!checkpoint.groups.empty(), "an Adafactor checkpoint has at least one parameter group");
  // An Adafactor over stand-in parameters (only their identity is saved),
  // written by Adafactor::save itself: the format is the one every load reads.
  std::vector<at::Tensor> stand_ins;
  std::vector<torch::optim::OptimizerParamGroup> groups;
  for (const auto& group : checkpoint.groups) {
    TORCH_CHECK(group.size >= 0, "a parameter group of ", group.size, " parameters");
    std::vector<at::Tensor> params;
    for (std::int64_t i = 0; i < group.size; ++i) params.push_back(at::empty({0}));
    stand_ins.insert(stand_ins.end(), params.begin(), params.end());
    groups.emplace_back(std::move(params), std::make_unique<AdafactorOptions>(group.options));
  }
  Adafactor optimizer(groups, checkpoint.groups.front().options);
  for (const auto& [index, state] : checkpoint.state) {
    TORCH_CHECK(index >= 0 && index < static_cast<std::int64_t>(stand_ins.size()),
                "state for parameter ", index, " but the groups hold ", stand_ins.size(),
                " parameters");
    optimizer.state()[stand_ins[index].unsafeGetTensorImpl()] =
        std::make_unique<AdafactorParamState>(state);
  }
  save_optimizer(optimizer, path);
}

}  // namespace tcltorch
