// The optimizer object around adafactor_step: options, state, serialization.
// Shaped after LibTorch's torch/csrc/api/src/optim/adam.cpp.
#include "tcltorch/adafactor.h"

#include <torch/serialize/archive.h>
#include <torch/utils.h>

#include <c10/util/Exception.h>

#include <cmath>
#include <sstream>

namespace tcltorch {

const char* to_string(AdafactorVariant v) {
  switch (v) {
    case AdafactorVariant::Torch: return "torch";
    case AdafactorVariant::Transformers: return "transformers";
    case AdafactorVariant::BigVision: return "big_vision";
  }
  return "?";
}

const char* to_string(FactoredDims f) {
  switch (f) {
    case FactoredDims::LastTwo: return "last_two";
    case FactoredDims::LargestTwo: return "largest_two";
    case FactoredDims::LeadingTwo: return "leading_two";
  }
  return "?";
}

const char* to_string(WeightDecayMode m) {
  switch (m) {
    case WeightDecayMode::Lr: return "lr";
    case WeightDecayMode::LrT: return "lr_t";
    case WeightDecayMode::Unscaled: return "unscaled";
    case WeightDecayMode::Corrected: return "corrected";
    case WeightDecayMode::Coupled: return "coupled";
  }
  return "?";
}

AdafactorVariant parse_variant(const std::string& name) {
  if (name == "torch") return AdafactorVariant::Torch;
  if (name == "transformers") return AdafactorVariant::Transformers;
  if (name == "big_vision") return AdafactorVariant::BigVision;
  TORCH_CHECK_VALUE(false,
                    "variant must be \"torch\", \"transformers\" or \"big_vision\", got \"",
                    name, "\"");
}

FactoredDims parse_factored_dims(const std::string& name) {
  if (name == "last_two") return FactoredDims::LastTwo;
  if (name == "largest_two") return FactoredDims::LargestTwo;
  if (name == "leading_two") return FactoredDims::LeadingTwo;
  TORCH_CHECK_VALUE(false,
                    "factored_dims must be \"last_two\", \"largest_two\" or "
                    "\"leading_two\", got \"",
                    name, "\"");
}

WeightDecayMode parse_weight_decay_mode(const std::string& name) {
  if (name == "lr") return WeightDecayMode::Lr;
  if (name == "lr_t") return WeightDecayMode::LrT;
  if (name == "unscaled") return WeightDecayMode::Unscaled;
  if (name == "corrected") return WeightDecayMode::Corrected;
  if (name == "coupled") return WeightDecayMode::Coupled;
  TORCH_CHECK_VALUE(false,
                    "weight_decay_mode must be \"lr\", \"lr_t\", \"unscaled\", "
                    "\"corrected\" or \"coupled\", got \"",
                    name, "\"");
}

std::optional<c10::ScalarType> parse_momentum_dtype(const std::string& name) {
  if (name == "none") return std::nullopt;
  if (name == "bfloat16") return at::kBFloat16;
  TORCH_CHECK_VALUE(false, "momentum_dtype must be \"bfloat16\" or \"none\", got \"",
                    name, "\"");
}

const char* momentum_dtype_name(std::optional<c10::ScalarType> dtype) {
  return dtype ? "bfloat16" : "none";
}

AdafactorOptions AdafactorOptions::for_variant(AdafactorVariant variant) {
  AdafactorOptions o;
  o.variant(variant);
  if (variant == AdafactorVariant::BigVision) {
    o.lr(1.0)
        .relative_step(false)
        .scale_parameter(false)
        .beta1(0.9)
        .momentum_dtype(at::kBFloat16)
        .beta2_cap(0.999)
        .d(std::nullopt)
        .factored_dims(FactoredDims::LargestTwo)
        .min_dim_size_to_factor(16);
  }
  return o;
}

WeightDecayMode AdafactorOptions::effective_weight_decay_mode() const {
  if (weight_decay_mode()) return *weight_decay_mode();
  return variant() == AdafactorVariant::Transformers ? WeightDecayMode::LrT
                                                     : WeightDecayMode::Lr;
}

AdafactorOptions::AdafactorOptions(double lr) : lr_(lr) {}

void AdafactorOptions::validate() const {
  // Messages name the option, the value and the allowed range; front doors
  // pass them on unchanged (Python: ValueError, Tcl: TORCH VALUE).
  auto finite = [](const char* name, double v) {
    TORCH_CHECK_VALUE(std::isfinite(v), name, " must be a finite number, got ", v);
  };
  finite("lr", lr());
  TORCH_CHECK_VALUE(lr() >= 0, "lr must be >= 0, got ", lr());
  finite("beta2_decay", beta2_decay());
  TORCH_CHECK_VALUE(beta2_decay() <= 0, "beta2_decay must be <= 0, got ",
                    beta2_decay());
  if (eps1()) {
    finite("eps1", *eps1());
    TORCH_CHECK_VALUE(*eps1() >= 0, "eps1 must be >= 0 or unset, got ", *eps1());
  }
  finite("eps2", eps2());
  TORCH_CHECK_VALUE(eps2() >= 0, "eps2 must be >= 0, got ", eps2());
  if (d()) {
    finite("d", *d());
    TORCH_CHECK_VALUE(*d() > 0, "d (clip threshold) must be > 0 or unset, got ", *d());
  }
  finite("weight_decay", weight_decay());
  TORCH_CHECK_VALUE(weight_decay() >= 0, "weight_decay must be >= 0, got ",
                    weight_decay());
  if (beta1()) {
    TORCH_CHECK_VALUE(*beta1() >= 0 && *beta1() < 1,
                      "beta1 must be in [0, 1) or unset, got ", *beta1());
  }
  TORCH_CHECK_VALUE(!warmup_init() || relative_step(),
                    "warmup_init requires relative_step");
  TORCH_CHECK_VALUE(min_dim_size_to_factor() >= 0,
                    "min_dim_size_to_factor must be >= 0, got ",
                    min_dim_size_to_factor());
  TORCH_CHECK_VALUE(beta2_cap() > 0 && beta2_cap() <= 1,
                    "beta2_cap must be in (0, 1], got ", beta2_cap());
  TORCH_CHECK_VALUE(decay_offset() >= 0, "decay_offset must be >= 0, got ",
                    decay_offset());
  if (max_lr()) {
    finite("max_lr", *max_lr());
    TORCH_CHECK_VALUE(*max_lr() > 0, "max_lr must be > 0 or unset, got ", *max_lr());
  }
  TORCH_CHECK_VALUE(!momentum_dtype() || *momentum_dtype() == at::kBFloat16,
                    "momentum_dtype must be bfloat16 or unset, got ",
                    *momentum_dtype());
}

namespace {
template <typename T>
void read_if_present(torch::serialize::InputArchive& archive, const char* key,
                     T& out) {
  c10::IValue value;
  if (archive.try_read(key, value)) out = value.to<T>();
}
}  // namespace

void AdafactorOptions::serialize(torch::serialize::OutputArchive& archive) const {
  archive.write("lr", c10::IValue(lr()));
  archive.write("beta2_decay", c10::IValue(beta2_decay()));
  archive.write("eps1", c10::IValue(eps1()));
  archive.write("eps2", c10::IValue(eps2()));
  archive.write("d", c10::IValue(d()));
  archive.write("weight_decay", c10::IValue(weight_decay()));
  archive.write("maximize", c10::IValue(maximize()));
  archive.write("beta1", c10::IValue(beta1()));
  archive.write("relative_step", c10::IValue(relative_step()));
  archive.write("scale_parameter", c10::IValue(scale_parameter()));
  archive.write("warmup_init", c10::IValue(warmup_init()));
  archive.write("variant", c10::IValue(std::string(to_string(variant()))));
  archive.write("factored_dims",
                c10::IValue(std::string(to_string(factored_dims()))));
  archive.write("min_dim_size_to_factor", c10::IValue(min_dim_size_to_factor()));
  archive.write("fp32_state", c10::IValue(fp32_state()));
  archive.write("stochastic_rounding", c10::IValue(stochastic_rounding()));
  archive.write("skip_nan_updates", c10::IValue(skip_nan_updates()));
  archive.write("beta2_cap", c10::IValue(beta2_cap()));
  archive.write("decay_offset", c10::IValue(decay_offset()));
  archive.write("caution", c10::IValue(caution()));
  archive.write("weight_decay_mode",
                c10::IValue(std::string(weight_decay_mode() ? to_string(*weight_decay_mode())
                                                            : "")));
  archive.write("max_lr", c10::IValue(max_lr()));
  archive.write("momentum_dtype",
                c10::IValue(std::string(momentum_dtype_name(momentum_dtype()))));
  archive.write("momentum_stochastic_rounding",
                c10::IValue(momentum_stochastic_rounding()));
}

void AdafactorOptions::serialize(torch::serialize::InputArchive& archive) {
  c10::IValue marker;
  // Every archive this class writes names its variant; one without it was
  // written by another optimizer.
  TORCH_CHECK(archive.try_read("variant", marker),
              "not an Adafactor checkpoint (its options have no \"variant\")");
  read_if_present(archive, "lr", lr_);
  read_if_present(archive, "beta2_decay", beta2_decay_);
  read_if_present(archive, "eps1", eps1_);
  read_if_present(archive, "eps2", eps2_);
  read_if_present(archive, "d", d_);
  read_if_present(archive, "weight_decay", weight_decay_);
  read_if_present(archive, "maximize", maximize_);
  read_if_present(archive, "beta1", beta1_);
  read_if_present(archive, "relative_step", relative_step_);
  read_if_present(archive, "scale_parameter", scale_parameter_);
  read_if_present(archive, "warmup_init", warmup_init_);
  std::string name;
  read_if_present(archive, "variant", name);
  if (!name.empty()) variant_ = parse_variant(name);
  name.clear();
  read_if_present(archive, "factored_dims", name);
  if (!name.empty()) factored_dims_ = parse_factored_dims(name);
  read_if_present(archive, "min_dim_size_to_factor", min_dim_size_to_factor_);
  read_if_present(archive, "fp32_state", fp32_state_);
  read_if_present(archive, "stochastic_rounding", stochastic_rounding_);
  read_if_present(archive, "skip_nan_updates", skip_nan_updates_);
  read_if_present(archive, "beta2_cap", beta2_cap_);
  read_if_present(archive, "decay_offset", decay_offset_);
  read_if_present(archive, "caution", caution_);
  name.clear();
  read_if_present(archive, "weight_decay_mode", name);
  weight_decay_mode_ = std::nullopt;
  if (!name.empty()) weight_decay_mode_ = parse_weight_decay_mode(name);
  read_if_present(archive, "max_lr", max_lr_);
  name.clear();
  read_if_present(archive, "momentum_dtype", name);
  if (!name.empty()) momentum_dtype_ = parse_momentum_dtype(name);
  read_if_present(archive, "momentum_stochastic_rounding", momentum_stochastic_rounding_);
  validate();
}

bool operator==(const AdafactorOptions& a, const AdafactorOptions& b) {
  return a.lr() == b.lr() && a.beta2_decay() == b.beta2_decay() &&
         a.eps1() == b.eps1() && a.eps2() == b.eps2() && a.d() == b.d() &&
         a.weight_decay() == b.weight_decay() && a.maximize() == b.maximize() &&
         a.beta1() == b.beta1() && a.relative_step() == b.relative_step() &&
         a.scale_parameter() == b.scale_parameter() &&
         a.warmup_init() == b.warmup_init() && a.variant() == b.variant() &&
         a.factored_dims() == b.factored_dims() &&
         a.min_dim_size_to_factor() == b.min_dim_size_to_factor() &&
         a.fp32_state() == b.fp32_state() &&
         a.stochastic_rounding() == b.stochastic_rounding() &&
         a.skip_nan_updates() == b.skip_nan_updates() &&
         a.beta2_cap() == b.beta2_cap() && a.decay_offset() == b.decay_offset() &&
         a.caution() == b.caution() && a.weight_decay_mode() == b.weight_decay_mode() &&
         a.max_lr() == b.max_lr() && a.momentum_dtype() == b.momentum_dtype() &&
         a.momentum_stochastic_rounding() == b.momentum_stochastic_rounding();
}

double AdafactorOptions::get_lr() const { return lr(); }
void AdafactorOptions::set_lr(const double lr) { this->lr(lr); }

void AdafactorParamState::serialize(
    torch::serialize::OutputArchive& archive) const {
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(step);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(row_var);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(col_var);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(variance);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(exp_avg);
}

void AdafactorParamState::serialize(torch::serialize::InputArchive& archive) {
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(torch::Tensor, step);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(torch::Tensor, row_var);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(torch::Tensor, col_var);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(torch::Tensor, variance);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(torch::Tensor, exp_avg);
}

namespace {
bool same_tensor(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.defined() != b.defined()) return false;
  return !a.defined() || torch::equal(a, b);
}
}  // namespace

bool operator==(const AdafactorParamState& a, const AdafactorParamState& b) {
  return same_tensor(a.step(), b.step()) && same_tensor(a.row_var(), b.row_var()) &&
         same_tensor(a.col_var(), b.col_var()) &&
         same_tensor(a.variance(), b.variance()) &&
         same_tensor(a.exp_avg(), b.exp_avg());
}

Adafactor::Adafactor(
    const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
    AdafactorOptions defaults)
    : Optimizer(param_groups, std::make_unique<AdafactorOptions>(defaults)) {
  defaults.validate();
  for (auto& group : param_groups_) {
    auto& options = static_cast<AdafactorOptions&>(group.options());
    options.validate();
    // Corrected weight decay divides by the lr given here, which schedules
    // later overwrite.
    if (!options.max_lr() && options.lr() > 0) options.max_lr(options.lr());
  }
}

Adafactor::Adafactor(std::vector<torch::Tensor> params, AdafactorOptions defaults)
    : Adafactor({torch::optim::OptimizerParamGroup(std::move(params))},
                std::move(defaults)) {}

torch::Tensor Adafactor::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss = {};
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  for (auto& group : param_groups_) {
    auto& options = static_cast<AdafactorOptions&>(group.options());
    // Options may have been changed since construction (set_lr, a scheduler).
    options.validate();
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      auto it = state_.find(p.unsafeGetTensorImpl());
      if (it == state_.end()) {
        auto state = std::make_unique<AdafactorParamState>();
        adafactor_init_state(p, options, *state);
        it = state_.emplace(p.unsafeGetTensorImpl(), std::move(state)).first;
      }
      if (!adafactor_step(p, p.grad(), static_cast<AdafactorParamState&>(*it->second),
                          options)) {
        ++skipped_updates_;
      }
    }
  }
  return loss;
}

void Adafactor::save(torch::serialize::OutputArchive& archive) const {
  serialize(*this, archive);
}

void Adafactor::load(torch::serialize::InputArchive& archive) {
  serialize(*this, archive);
}

}  // namespace tcltorch
