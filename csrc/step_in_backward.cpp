// The step inside backward: a post-accumulate-grad hook on each parameter
// runs that parameter's Adafactor step the moment backward has accumulated
// its gradient, then frees the gradient, so that a training step holds about
// one parameter's gradient instead of all of them. Each update depends only
// on its own gradient and state (the clipping is per parameter), so the
// result is the usual step's, bit for bit.
//
// Each tensor has a single post-accumulate-grad slot, which Python's
// register_post_accumulate_grad_hook also uses (and overwrites, the first
// time for each tensor, with a hook object that stays there after its
// handles are removed): a parameter whose slot is taken is refused, a hook
// replaced later is an error at the next backward pass or step(), and
// removal clears only a slot that still holds this optimizer's own hook.
// Hooks reach the optimizer through a weak pointer, so a hook that outlives
// it does nothing.
#include "tcltorch/step_in_backward.h"

#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/csrc/autograd/variable.h>

#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>

#include <mutex>
#include <sstream>
#include <typeinfo>
#include <unordered_map>
#include <unordered_set>

#include "tcltorch/adafactor.h"

namespace tcltorch {

namespace {

std::mutex averaged_mutex;
std::unordered_map<const void*, int>& averaged() {
  static std::unordered_map<const void*, int> marks;
  return marks;
}

std::string shape_text(const at::Tensor& t) {
  std::ostringstream out;
  out << t.sizes();
  return out.str();
}

}  // namespace

const char* accumulate_steps_requirement() {
  static const std::string text = std::string(rule_text(kAccumulateStepsRule)) +
                                  " (the number of backward passes whose gradients one step uses)";
  return text.c_str();
}

std::string accumulate_steps_error(const std::string& got) {
  return std::string("accumulate_steps must be an integer ") + accumulate_steps_requirement() +
         ", got " + got;
}

void check_accumulate_steps(std::int64_t accumulate_steps) {
  TORCH_CHECK_VALUE(rule_accepts(kAccumulateStepsRule, static_cast<double>(accumulate_steps)),
                    accumulate_steps_error(std::to_string(accumulate_steps)));
}

std::string step_in_backward_conflict(StepInBackwardConflict conflict) {
  switch (conflict) {
    case StepInBackwardConflict::ShardedState:
      return "the step in backward does not compose with sharded optimizer state (ZeRO-1): "
             "the sharded step needs the gradients averaged over the ranks, which happens "
             "only after backward, and then broadcasts each parameter from the rank that "
             "owns it";
    case StepInBackwardConflict::DataParallel:
      return "the step in backward does not compose with data parallel training: the "
             "gradients are averaged over the ranks only after backward, so a step inside "
             "backward would use this rank's local gradient";
    case StepInBackwardConflict::OverlappingBackward:
      return "accumulate_steps counts backward passes, and this backward pass began while "
             "another was still running (inside its backward, as torch.utils.checkpoint with "
             "use_reentrant=True does, or on another thread), so it would count as a pass of "
             "its own: checkpoint with use_reentrant=False, run one backward at a time, or use "
             "accumulate_steps 1";
  }
  return "";
}

std::string gradient_twice_in_one_pass_error(std::size_t group, std::size_t position,
                                             const std::string& shape) {
  return "step in backward: parameter " + std::to_string(position + 1) + " of group " +
         std::to_string(group + 1) + " (counting from 1; shape " + shape +
         ") got a gradient a second time in one backward pass, after the step in backward had "
         "taken its first: a backward pass ran inside this one and both reach the parameter "
         "(torch.utils.checkpoint with use_reentrant=True runs the backward of its segment as a "
         "pass of its own, so a parameter used both inside and outside the segment, such as a "
         "tied embedding, gets its gradient in two parts), or two passes ran at the same time on "
         "different threads. A second step would make two steps with parts of its gradient "
         "instead of the usual one with their sum, so it is refused (the second part stays in its "
         "gradient): checkpoint with use_reentrant=False, or turn the step in backward off";
}

void mark_averaged_after_backward(const at::Tensor& param, bool on) {
  std::lock_guard<std::mutex> lock(averaged_mutex);
  auto& marks = averaged();
  const void* key = param.unsafeGetTensorImpl();
  if (on) {
    ++marks[key];
  } else if (auto it = marks.find(key); it != marks.end() && --it->second <= 0) {
    marks.erase(it);
  }
}

bool averaged_after_backward(const at::Tensor& param) {
  std::lock_guard<std::mutex> lock(averaged_mutex);
  return averaged().count(param.unsafeGetTensorImpl()) != 0;
}

namespace detail {

struct StepInBackward : std::enable_shared_from_this<StepInBackward> {
  struct Param {
    at::Tensor tensor;
    std::size_t group;
    std::size_t position;  // in its group's params()
    int stepped_in = -1;   // the backward pass that last stepped it
    // Alive while the pass that last stepped it runs (see `pass_running`).
    std::weak_ptr<void> stepped_running;
  };

  Adafactor* owner = nullptr;
  std::int64_t accumulate_steps = 1;
  std::mutex mutex;
  // The backward pass (the autograd engine's graph task) seen last, how many
  // passes the current accumulation has seen, and whether the one seen last
  // is the pass that steps.
  int pass = -1;
  std::int64_t passes = 0;
  bool stepping = false;
  // Alive while the pass seen last runs: held by the callback queued on that
  // pass, dropped when the callback runs at its end or when the engine drops
  // a pass that failed.
  std::weak_ptr<void> pass_running;
  std::vector<Param> params;
  std::vector<int> validated_in;  // per group: the pass that checked its options

  // Steps params[i] with its group's options (validated once per pass, so
  // that a changed lr or an edited option is checked), then frees its
  // gradient. Called with `mutex` held.
  void step(std::size_t i) {
    Param& p = params[i];
    const torch::Tensor& grad = p.tensor.grad();  // reset below, after its last use
    if (!grad.defined()) return;
    auto& options = static_cast<AdafactorOptions&>(owner->param_groups_[p.group].options());
    if (validated_in[p.group] != pass) {
      options.validate();
      validated_in[p.group] = pass;
    }
    {
      c10::NoGradGuard no_grad;
      owner->step_parameter(p.tensor, grad, options);
    }
    p.tensor.mutable_grad().reset();
    p.stepped_in = pass;
    p.stepped_running = pass_running;
  }

  // Whether params[i], reached in backward pass `task`, was already stepped
  // within the time of this pass: by a pass that began after it (one inside
  // it, or beside it on another thread; graph task ids grow), or by one that
  // is still running (this pass then began inside or beside it). Its second
  // step would not be the usual step, one step with the sum.
  bool stepped_within(std::size_t i, int task) const {
    const Param& p = params[i];
    if (task < 0 || p.stepped_in < 0) return false;
    return p.stepped_in > task || !p.stepped_running.expired();
  }

  // The hook of params[i]: backward has just accumulated its gradient.
  void on_gradient(std::size_t i) {
    std::lock_guard<std::mutex> lock(mutex);
    const int task = torch::autograd::get_current_graph_task_id();
    if (task != pass) {  // the first parameter this backward pass reaches
      // A parameter whose hook was replaced would silently not be stepped.
      check_hooks_in_place(*this);
      // Counting passes needs them one after another. (With one pass per
      // step, a pass inside another steps what it accumulated, as usual,
      // unless both passes reach a parameter: see stepped_within.)
      TORCH_CHECK(accumulate_steps == 1 || pass_running.expired(),
                  step_in_backward_conflict(StepInBackwardConflict::OverlappingBackward),
                  " (accumulate_steps is ", accumulate_steps, ")");
      pass = task;
      stepping = ++passes >= accumulate_steps;
      if (stepping) passes = 0;
      auto running = std::make_shared<char>();
      pass_running = running;
      // A parameter this pass does not reach may still hold a gradient
      // from the earlier passes: it is stepped when the pass ends.
      std::weak_ptr<StepInBackward> weak = weak_from_this();
      torch::autograd::Engine::get_default_engine().queue_callback(
          [weak, task, running = std::move(running)]() mutable {
            running.reset();
            if (auto self = weak.lock()) self->finish(task);
          });
    }
    if (!stepping) return;
    // Refused before the second step: the first is done, the second part of
    // the gradient stays in .grad.
    if (stepped_within(i, task)) {
      const Param& p = params[i];
      TORCH_CHECK(false,
                  gradient_twice_in_one_pass_error(p.group, p.position, shape_text(p.tensor)));
    }
    step(i);
  }

  void finish(int task) {
    std::lock_guard<std::mutex> lock(mutex);
    if (pass != task || !stepping) return;
    for (std::size_t i = 0; i < params.size(); ++i) {
      if (params[i].stepped_in != task) step(i);
    }
  }

  // Clears every slot that still holds one of this object's hooks.
  void remove_hooks();
};

namespace {

struct Hook : torch::autograd::PostAccumulateGradHook {
  Hook(std::weak_ptr<StepInBackward> owner, const StepInBackward* identity, std::size_t index)
      : owner(std::move(owner)), identity(identity), index(index) {}
  void operator()(const at::Tensor&) override {
    if (auto s = owner.lock()) s->on_gradient(index);
  }
  std::weak_ptr<StepInBackward> owner;
  const StepInBackward* identity;  // compared, never followed
  std::size_t index;
};

// The hook in the slot of `t`, or nullptr (reading the slot needs autograd
// metadata, which a tensor that never required grad lacks).
torch::autograd::PostAccumulateGradHook* slot_hook(const at::Tensor& t) {
  if (!torch::autograd::impl::get_autograd_meta(t)) return nullptr;
  return torch::autograd::impl::post_acc_grad_hooks(t).get();
}

bool is_python_hook(const torch::autograd::PostAccumulateGradHook& hook) {
  // torch::autograd::PyFunctionTensorPostAccGradHooks, which the core does
  // not link: known by name, for the wording of an error only.
  return std::string(typeid(hook).name()).find("PyFunctionTensorPostAccGradHooks") !=
         std::string::npos;
}

// Why a slot may hold a hook that is not this optimizer's.
constexpr const char* kPythonHookNote =
    "Python's register_post_accumulate_grad_hook takes the slot the first time it is called "
    "on a tensor, and its hook object keeps it after every handle is removed";

}  // namespace

void check_hooks_in_place(const StepInBackward& in_backward) {
  for (std::size_t i = 0; i < in_backward.params.size(); ++i) {
    const auto& p = in_backward.params[i];
    auto* now = slot_hook(p.tensor);
    const auto* ours = dynamic_cast<const Hook*>(now);
    if (ours && ours->identity == &in_backward && ours->index == i) continue;
    TORCH_CHECK(false, "step in backward: parameter ", p.position + 1, " of group ", p.group + 1,
                " (counting from 1; shape ", shape_text(p.tensor),
                ") no longer holds this optimizer's post-accumulate-grad hook, so backward "
                "does not step it: a tensor has one such hook, and ",
                now && is_python_hook(*now)
                    ? std::string("a Python hook replaced it (") + kPythonHookNote + ")"
                    : std::string(now ? "another hook replaced it" : "it was removed"),
                "; step that parameter with an optimizer that does not step in backward");
  }
}

void StepInBackward::remove_hooks() {
  for (auto& p : params) {
    auto* hook = dynamic_cast<Hook*>(slot_hook(p.tensor));
    if (hook && hook->identity == this) {
      torch::autograd::impl::post_acc_grad_hooks(p.tensor).reset();
    }
  }
}

}  // namespace detail

bool has_step_in_backward_hook(const at::Tensor& param) {
  return dynamic_cast<detail::Hook*>(detail::slot_hook(param)) != nullptr;
}

Adafactor::~Adafactor() {
  try {
    if (in_backward_) in_backward_->remove_hooks();
  } catch (...) {
  }
}

std::int64_t Adafactor::accumulate_steps() const {
  return in_backward_ ? in_backward_->accumulate_steps : 1;
}

void Adafactor::take_step_in_backward(Adafactor& from) {
  if (!from.in_backward_ || &from == this) return;
  const std::int64_t n = from.accumulate_steps();
  const std::int64_t passes = from.in_backward_->passes;
  from.set_step_in_backward(false);
  try {
    set_step_in_backward(true, n);
  } catch (...) {
    from.set_step_in_backward(true, n);
    from.in_backward_->passes = passes;
    throw;
  }
  in_backward_->passes = passes;
}

void Adafactor::set_step_in_backward(bool on, std::int64_t accumulate_steps) {
  check_accumulate_steps(accumulate_steps);
  if (!on) {
    if (in_backward_) in_backward_->remove_hooks();
    in_backward_.reset();
    return;
  }
  if (in_backward_) {
    std::lock_guard<std::mutex> lock(in_backward_->mutex);
    in_backward_->accumulate_steps = accumulate_steps;
    return;
  }
  auto state = std::make_shared<detail::StepInBackward>();
  state->owner = this;
  state->accumulate_steps = accumulate_steps;
  state->validated_in.assign(param_groups_.size(), -1);
  // Every parameter is checked before any hook is set: all or nothing.
  std::unordered_set<const void*> seen;
  for (std::size_t g = 0; g < param_groups_.size(); ++g) {
    const auto& group = param_groups_[g].params();
    for (std::size_t position = 0; position < group.size(); ++position) {
      const auto& p = group[position];
      if (!seen.insert(p.unsafeGetTensorImpl()).second) continue;
      TORCH_CHECK_VALUE(p.is_leaf(), "step in backward: a parameter of shape ", shape_text(p),
                        " is not a leaf tensor (it was computed from others), so backward "
                        "never accumulates a gradient into it");
      TORCH_CHECK_VALUE(!averaged_after_backward(p),
                        step_in_backward_conflict(StepInBackwardConflict::DataParallel));
      if (const auto* taken = detail::slot_hook(p)) {
        const bool python = detail::is_python_hook(*taken);
        TORCH_CHECK_VALUE(
            false, "step in backward: a parameter of shape ", shape_text(p),
            " already has a post-accumulate-grad hook (",
            has_step_in_backward_hook(p) ? "another optimizer steps it in backward"
            : python ? std::string("a Python one: ") + detail::kPythonHookNote
                     : std::string("for example from register_post_accumulate_grad_hook"),
            "), and a tensor has one such hook: ",
            python ? "step it with an optimizer that does not step in backward"
                   : "remove it first");
      }
      state->params.push_back({p, g, position});
    }
  }
  for (std::size_t i = 0; i < state->params.size(); ++i) {
    torch::autograd::impl::set_post_acc_grad_hooks(
        state->params[i].tensor, std::make_unique<detail::Hook>(state, state.get(), i));
  }
  in_backward_ = std::move(state);
}

}  // namespace tcltorch
