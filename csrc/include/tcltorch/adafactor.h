// tcltorch::Adafactor: a LibTorch optimizer in the shape of torch::optim::Adam
// (options, per-parameter state, serialization), whose numbers match
// torch.optim.Adafactor by default and the Shazeer & Stern / transformers
// algorithm with variant(AdafactorVariant::Transformers).
#pragma once

#include <torch/optim/optimizer.h>
#include <torch/optim/serialize.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "tcltorch/export.h"

namespace tcltorch {

// Where eps1 enters and how weight decay is scaled; see docs/algorithm.md.
enum class AdafactorVariant : std::int8_t {
  Torch,         // torch.optim.Adafactor: eps1 clamps V, decay scaled by lr
  Transformers,  // the paper / transformers / fairseq: eps1 added to G^2,
                 // decay scaled by the per-step lr_t
  BigVision,     // big_vision / timm's AdafactorBigVision: eps1 added to G^2,
                 // momentum averages the unscaled clipped update and the
                 // step size multiplies afterwards
};

// Which two dimensions of a >= 2-D parameter carry the row/column factors.
enum class FactoredDims : std::int8_t {
  LastTwo,     // torch, transformers: dims -2 and -1
  LargestTwo,  // optax, t5x: the two largest dims (ties: the later ones)
  LeadingTwo,  // timm: dims 0 and 1 of a > 2-D weight when both pass the
               // size rule, else the last two
};

// How weight decay scales with the step size; p *= 1 - c with c below
// (coupled: c*p joins the gradient instead).
enum class WeightDecayMode : std::int8_t {
  Lr,         // c = lr * wd (torch)
  LrT,        // c = lr_t * wd, the step's own size (transformers)
  Unscaled,   // c = wd (optax, big_vision, pytorch_optimizer fixed_decay)
  Corrected,  // c = wd * lr^2 / max_lr (timm corrected_weight_decay)
  Coupled,    // G += wd * p before everything (L2)
};

TCLTORCH_API const char* to_string(AdafactorVariant v);
TCLTORCH_API const char* to_string(FactoredDims f);
TCLTORCH_API const char* to_string(WeightDecayMode m);
// Parse the names printed by to_string; throw c10::ValueError otherwise.
TCLTORCH_API AdafactorVariant parse_variant(const std::string& name);
TCLTORCH_API FactoredDims parse_factored_dims(const std::string& name);
TCLTORCH_API WeightDecayMode parse_weight_decay_mode(const std::string& name);
// "bfloat16" or "none" (the parameter's own dtype, or its state dtype).
TCLTORCH_API std::optional<c10::ScalarType> parse_momentum_dtype(const std::string& name);
TCLTORCH_API const char* momentum_dtype_name(std::optional<c10::ScalarType> dtype);

struct TCLTORCH_API AdafactorOptions
    : public torch::optim::OptimizerCloneableOptions<AdafactorOptions> {
  AdafactorOptions(double lr = 1e-2);

  // Relative step on: the cap of rho_t = min(lr, 1/sqrt(t)); off: rho_t = lr.
  TORCH_ARG(double, lr) = 1e-2;
  // 1 - beta2_t = t^beta2_decay; must be <= 0.
  TORCH_ARG(double, beta2_decay) = -0.8;
  // Regulariser of the second moment. Unset: finfo(param dtype).eps per
  // parameter for the torch variant, 1e-30 for the transformers variant.
  TORCH_ARG(std::optional<double>, eps1) = std::nullopt;
  // Floor of RMS(param) in the parameter scale.
  TORCH_ARG(double, eps2) = 1e-3;
  // Clip threshold on RMS(update); unset: no clipping.
  TORCH_ARG(std::optional<double>, d) = 1.0;
  TORCH_ARG(double, weight_decay) = 0.0;
  TORCH_ARG(bool, maximize) = false;
  // Momentum on the scaled, clipped update; unset = none (no exp_avg state).
  TORCH_ARG(std::optional<double>, beta1) = std::nullopt;
  TORCH_ARG(bool, relative_step) = true;
  TORCH_ARG(bool, scale_parameter) = true;
  // With relative_step: the cap of rho_t becomes 1e-6 * t instead of lr.
  TORCH_ARG(bool, warmup_init) = false;
  TORCH_ARG(AdafactorVariant, variant) = AdafactorVariant::Torch;
  TORCH_ARG(FactoredDims, factored_dims) = FactoredDims::LastTwo;
  // 0: factor every >= 2-D tensor; else only when both factored dims are at
  // least this size.
  TORCH_ARG(std::int64_t, min_dim_size_to_factor) = 0;
  // bf16/fp16 parameters: keep the state in fp32 (it follows the gradient
  // dtype otherwise, as in torch.optim.Adafactor).
  TORCH_ARG(bool, fp32_state) = false;
  // bf16 parameters: round the fp32 result back stochastically.
  TORCH_ARG(bool, stochastic_rounding) = false;
  // A gradient with an infinite or NaN element leaves the parameter and its
  // state (step count included) untouched; the optimizer counts the skip.
  // Off: non-finite values flow into the update, as in torch.optim.Adafactor.
  TORCH_ARG(bool, skip_nan_updates) = false;
  // beta2_t = min(1 - t^beta2_decay, beta2_cap); 1: no cap.
  TORCH_ARG(double, beta2_cap) = 1.0;
  // The second-moment schedule counts steps from here on: t becomes
  // max(t - decay_offset, 1) in beta2_t (fine-tuning restarts).
  TORCH_ARG(std::int64_t, decay_offset) = 0;
  // With beta1: the cautious-optimizer mask (update zeroed where its sign
  // disagrees with the gradient, rescaled by the kept fraction).
  TORCH_ARG(bool, caution) = false;
  // Unset: lr for the torch and big_vision variants, lr_t for transformers.
  TORCH_ARG(std::optional<WeightDecayMode>, weight_decay_mode) = std::nullopt;
  // The lr of the corrected weight decay; unset: the lr at construction
  // (Adafactor remembers it; adafactor_step alone uses the current lr).
  TORCH_ARG(std::optional<double>, max_lr) = std::nullopt;
  // exp_avg's dtype; unset: the state dtype. bfloat16: stored rounded to
  // nearest, as torch ops round (stochastically with momentum_stochastic_rounding).
  TORCH_ARG(std::optional<c10::ScalarType>, momentum_dtype) = std::nullopt;
  TORCH_ARG(bool, momentum_stochastic_rounding) = false;

 public:
  // The options a variant starts from: torch's and transformers' are the
  // struct's defaults; big_vision's are lr 1, no relative step or parameter
  // scale, beta1 0.9 in bfloat16, beta2_cap 0.999, no clipping, the two
  // largest dims factored from size 16 (timm's AdafactorBigVision).
  static AdafactorOptions for_variant(AdafactorVariant variant);
  WeightDecayMode effective_weight_decay_mode() const;
  // Throws c10::ValueError naming the first invalid option, its value and
  // the allowed range.
  void validate() const;

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
  std::int64_t skipped_updates_ = 0;
};

}  // namespace tcltorch
