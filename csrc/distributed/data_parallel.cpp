// Data-parallel gradient averaging: a hook on each parameter queues, once per
// backward pass, a callback that the autograd engine runs after the whole
// pass (every gradient accumulated); it all-reduces the gradients one flat
// buffer per bucket.
#include "tcltorch/distributed.h"
#include "tcltorch/step_in_backward.h"

#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/graph_task.h>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

namespace tcltorch::distributed {

struct DataParallel::State {
  std::shared_ptr<ProcessGroup> group;
  std::vector<at::Tensor> params;
  std::vector<std::vector<std::size_t>> buckets;
  std::vector<std::pair<std::size_t, unsigned>> hooks;  // (parameter, hook)
  // The backward pass whose callback is queued: a pass that failed before
  // its callback ran must not stop the next one from queueing its own.
  int queued_for = -1;

  void average() {
    c10::NoGradGuard no_grad;
    for (const auto& bucket : buckets) {
      std::vector<at::Tensor> parts;
      parts.reserve(bucket.size());
      for (std::size_t i : bucket) {
        const auto& g = params[i].grad();
        parts.push_back(g.defined() ? g.reshape({-1}) : at::zeros({params[i].numel()},
                                                                  params[i].options()));
      }
      at::Tensor flat = at::cat(parts);
      group->all_reduce(flat, ReduceOp::Avg);
      std::int64_t offset = 0;
      for (std::size_t i : bucket) {
        auto& p = params[i];
        at::Tensor piece = flat.narrow(0, offset, p.numel()).view(p.sizes());
        if (p.grad().defined()) {
          p.mutable_grad().copy_(piece);
        } else {
          p.mutable_grad() = piece.clone();
        }
        offset += p.numel();
      }
    }
  }
};

namespace {

// Reverse parameter order (the order gradients become ready in), a new
// bucket when the dtype changes or the cap would be passed.
std::vector<std::vector<std::size_t>> make_buckets(const std::vector<at::Tensor>& params,
                                                   std::int64_t cap) {
  std::vector<std::vector<std::size_t>> buckets;
  std::int64_t bytes = 0;
  for (std::size_t k = params.size(); k-- > 0;) {
    const auto& p = params[k];
    const std::int64_t b = p.numel() * p.element_size();
    if (buckets.empty() || bytes + b > cap ||
        params[buckets.back().front()].scalar_type() != p.scalar_type()) {
      if (buckets.empty() || !buckets.back().empty()) buckets.emplace_back();
      bytes = 0;
    }
    buckets.back().push_back(k);
    bytes += b;
  }
  return buckets;
}

}  // namespace

DataParallel::DataParallel(std::shared_ptr<ProcessGroup> group, std::vector<at::Tensor> parameters,
                           std::vector<at::Tensor> buffers, std::int64_t bucket_bytes)
    : state_(std::make_shared<State>()) {
  if (!group) throw Error("STATE", "data parallel: no process group");
  if (bucket_bytes <= 0) {
    throw Error("VALUE", "data parallel: bad bucket size " + std::to_string(bucket_bytes) +
                             " bytes: must be positive");
  }
  for (const auto& p : parameters) {
    if (!p.defined() || !p.is_floating_point()) {
      throw Error("VALUE", "data parallel: every parameter must be a floating-point tensor");
    }
    if (has_step_in_backward_hook(p)) {
      throw Error("VALUE", "data parallel: " +
                               step_in_backward_conflict(StepInBackwardConflict::DataParallel));
    }
  }
  state_->group = std::move(group);
  state_->params = std::move(parameters);
  state_->buckets = make_buckets(state_->params, bucket_bytes);
  // Rank 0's parameters and buffers, everywhere.
  std::vector<at::Tensor> all = state_->params;
  for (const auto& b : buffers) {
    if (b.defined()) all.push_back(b);
  }
  broadcast_coalesced(*state_->group, all, 0, bucket_bytes);
  std::weak_ptr<State> weak = state_;
  for (std::size_t i = 0; i < state_->params.size(); ++i) {
    auto& p = state_->params[i];
    if (!p.requires_grad()) continue;
    state_->hooks.emplace_back(i, p.register_hook([weak](const at::TensorBase&) {
      auto state = weak.lock();
      const int pass = torch::autograd::get_current_graph_task_id();
      if (!state || state->queued_for == pass) return;
      state->queued_for = pass;
      torch::autograd::Engine::get_default_engine().queue_callback([weak] {
        auto s = weak.lock();
        if (!s) return;
        s->queued_for = -1;
        s->average();
      });
    }));
  }
  // An optimizer asked to step these parameters inside backward refuses.
  for (const auto& p : state_->params) mark_averaged_after_backward(p, true);
}

DataParallel::~DataParallel() {
  for (const auto& p : state_->params) mark_averaged_after_backward(p, false);
  for (auto [i, hook] : state_->hooks) {
    try {
      state_->params[i].remove_hook(hook);
    } catch (...) {
    }
  }
}

void DataParallel::average_gradients() { state_->average(); }

const std::vector<std::vector<std::size_t>>& DataParallel::buckets() const {
  return state_->buckets;
}

ProcessGroup& DataParallel::group() const { return *state_->group; }

}  // namespace tcltorch::distributed
