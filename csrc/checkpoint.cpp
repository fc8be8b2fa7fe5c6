#include "tcltorch/checkpoint.h"

#include <torch/serialize.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
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

void load_optimizer(Adafactor& optimizer, const std::string& path) {
  std::vector<torch::optim::OptimizerParamGroup> groups;
  for (const auto& g : optimizer.param_groups()) groups.emplace_back(g);
  Adafactor scratch(groups, static_cast<const AdafactorOptions&>(optimizer.defaults()));
  torch::load(scratch, path);
  for (const auto& group : scratch.param_groups()) {
    const auto& options = static_cast<const AdafactorOptions&>(group.options());
    for (const auto& p : group.params()) {
      auto it = scratch.state().find(p.unsafeGetTensorImpl());
      if (it == scratch.state().end()) continue;
      const auto& s = static_cast<const AdafactorParamState&>(*it->second);
      adafactor_check_state(p, s, options);
      for (const auto* t : {&s.step(), &s.row_var(), &s.col_var(), &s.variance(), &s.exp_avg()}) {
        TORCH_CHECK(!t->defined() || at::isfinite(*t).all().item<bool>(),
                    "the checkpoint holds infinite or NaN state (a damaged file?)");
      }
    }
  }
  // All checked: take it.
  optimizer.state() = std::move(scratch.state());
  for (std::size_t i = 0; i < optimizer.param_groups().size(); ++i) {
    optimizer.param_groups()[i].set_options(scratch.param_groups()[i].options().clone());
  }
}

}  // namespace tcltorch
