// tcltorch::Adafactor: a LibTorch optimizer in the shape of torch::optim::Adam
// (options, per-parameter state, serialization), whose numbers match
// torch.optim.Adafactor by default and the Shazeer & Stern / transformers
// algorithm with variant(AdafactorVariant::Transformers).
#pragma once

#include <torch/optim/optimizer.h>
#include <torch/optim/serialize.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "tcltorch/adafactor_options.h"
#include "tcltorch/export.h"

namespace tcltorch {

namespace detail {
struct StepInBackward;  // step_in_backward.cpp
}

TCLTORCH_API const char* to_string(AdafactorVariant v);
TCLTORCH_API const char* to_string(FactoredDims f);
// Parse the names printed by to_string; throw c10::ValueError otherwise.
TCLTORCH_API AdafactorVariant parse_variant(const std::string& name);
TCLTORCH_API FactoredDims parse_factored_dims(const std::string& name);

struct TCLTORCH_API AdafactorOptions
    : public torch::optim::OptimizerCloneableOptions<AdafactorOptions> {
  // Every option at its default for the torch variant (the table's first
  // column), with this lr.
  AdafactorOptions(double lr = 1e-2);
  // Every option at its default for `variant`, the variant included.
  static AdafactorOptions defaults_for(AdafactorVariant variant);

  // One field and setter per row of the table in tcltorch/adafactor_options.h,
  // which documents each.
#define TCLTORCH_ADAFACTOR_OPTION_FIELD(ctype, field, ...) TORCH_ARG(ctype, field){};
  TCLTORCH_ADAFACTOR_OPTIONS(TCLTORCH_ADAFACTOR_OPTION_FIELD)
#undef TCLTORCH_ADAFACTOR_OPTION_FIELD

 public:
  // Throws c10::ValueError naming the first invalid option, its value and
  // the allowed range.
  void validate() const;
  // torch.optim.Adafactor's own checks, with its messages ("Clipping
  // threshold d should be >= 1 but is: 0.0"), for the options it has; then
  // validate(). The Python class runs it for variant="torch".
  void validate_as_torch() const;

  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  TCLTORCH_API friend bool operator==(const AdafactorOptions& lhs,
                                      const AdafactorOptions& rhs);
  double get_lr() const override;
  void set_lr(const double lr) override;
};

// Names and shapes follow torch.optim.Adafactor so that state moves between
// front doors and to and from PyTorch: `step` is a 0-d float32 CPU tensor,
// factored parameters hold `row_var` [..., n, 1] and `col_var` [..., 1, m],
// the others `variance`; `exp_avg` exists when beta1 is set.
struct TCLTORCH_API AdafactorParamState
    : public torch::optim::OptimizerCloneableParamState<AdafactorParamState> {
  TORCH_ARG(torch::Tensor, step);
  TORCH_ARG(torch::Tensor, row_var);
  TORCH_ARG(torch::Tensor, col_var);
  TORCH_ARG(torch::Tensor, variance);
  TORCH_ARG(torch::Tensor, exp_avg);

 public:
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  TCLTORCH_API friend bool operator==(const AdafactorParamState& lhs,
                                      const AdafactorParamState& rhs);
};

// One shard of a parameter that is split along dim 0 across processes (as
// FSDP2 does): the step computes on the local shard and completes the sums
// that span shards (column statistics when rows are split, the parameter's
// and the update's RMS) with `all_reduce_sum`, which every process holding a
// shard must call in the same order, empty shards included.
struct AdafactorShard {
  std::vector<std::int64_t> global_sizes;  // shape of the whole parameter
  // Sums `count` doubles element-wise over the processes, in place.
  std::function<void(double* values, std::size_t count)> all_reduce_sum;
};

// Which two dims of a parameter of this shape are factored (row dim first),
// or nullopt when its second moment is kept whole.
TCLTORCH_API std::optional<std::pair<std::int64_t, std::int64_t>>
adafactor_factored_dims(at::IntArrayRef sizes, const AdafactorOptions& options);

// Fills `state` for `param` (zeros of the shapes above; `step` = 0).
TCLTORCH_API void adafactor_init_state(const torch::Tensor& param,
                                       const AdafactorOptions& options,
                                       AdafactorParamState& state,
                                       const AdafactorShard* shard = nullptr);

// Throws c10::Error unless `state` has the tensors, shapes and dtypes that
// `options` call for with this parameter (e.g. after loading a file).
TCLTORCH_API void adafactor_check_state(const torch::Tensor& param,
                                        const AdafactorParamState& state,
                                        const AdafactorOptions& options,
                                        const AdafactorShard* shard = nullptr);

// One Adafactor step of one parameter, in place on `param` and `state`.
// The whole algorithm lives here; every front door calls it. Returns false
// when skip_nan_updates skipped the step.
TCLTORCH_API bool adafactor_step(const torch::Tensor& param,
                                 const torch::Tensor& grad,
                                 AdafactorParamState& state,
                                 const AdafactorOptions& options,
                                 const AdafactorShard* shard = nullptr);

class TCLTORCH_API Adafactor : public torch::optim::Optimizer {
 public:
  explicit Adafactor(
      const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
      AdafactorOptions defaults = {});
  explicit Adafactor(std::vector<torch::Tensor> params,
                     AdafactorOptions defaults = {});
  // Removes this optimizer's hooks from its parameters (see below).
  ~Adafactor() override;

  // With `on`, each parameter is stepped inside backward, as soon as its
  // gradient is accumulated, with its group's options at that moment, and
  // the gradient is then freed; with accumulate_steps N > 1 the gradients of
  // N backward passes accumulate and the steps run inside the N-th.
  // step() then only runs its closure. A setting of this object, not an
  // option: save/load neither store nor change it. Off (the default) and
  // destruction remove exactly this optimizer's hooks. Throws
  // c10::ValueError for accumulate_steps < 1, or for a parameter that
  // already has a post-accumulate-grad hook or whose gradient a
  // distributed::DataParallel averages after backward. Later, a backward pass
  // fails with the reason when a parameter's hook slot was taken by another
  // hook (step() too), when a parameter gets a second gradient within one
  // pass, or, with accumulate_steps > 1, when a backward pass begins while
  // another is running (step_in_backward.h words every refusal).
  virtual void set_step_in_backward(bool on, std::int64_t accumulate_steps = 1);
  bool step_in_backward() const { return in_backward_ != nullptr; }
  std::int64_t accumulate_steps() const;
  // Moves the step in backward, with the count of an accumulation in
  // progress, from `from` (over the same parameters) to this optimizer: for
  // replacing an optimizer by a freshly loaded copy.
  void take_step_in_backward(Adafactor& from);

  torch::Tensor step(LossClosure closure = nullptr) override;
  // Parameter updates skipped by skip_nan_updates since construction.
  std::int64_t skipped_updates() const { return skipped_updates_; }
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

 private:
  template <typename Self, typename Archive>
  static void serialize(Self& self, Archive& archive) {
    _TORCH_OPTIM_SERIALIZE_WITH_TEMPLATE_ARG(Adafactor);
  }
  // One parameter's step with its group's options: the state is made on
  // first use; a skip_nan_updates skip is counted. `grad` is param.grad(),
  // defined, which the caller has already fetched (with many small tensors
  // each fetch is a measurable share of the step).
  void step_parameter(const torch::Tensor& param, const torch::Tensor& grad,
                      const AdafactorOptions& options);
  friend struct detail::StepInBackward;
  std::int64_t skipped_updates_ = 0;
  std::shared_ptr<detail::StepInBackward> in_backward_;
};

}  // namespace tcltorch
