// The Adafactor step of one parameter. This file is the single home of the
// algorithm (docs/algorithm.md gives the math); the optimizer classes of every
// front door call adafactor_step.
#include "tcltorch/adafactor.h"
#include "adafactor_detail.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace tcltorch {
namespace {

bool is_low_precision(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16;
}

// bf16/fp16 parameters are computed in fp32.
at::ScalarType compute_dtype(at::ScalarType param_dtype) {
  return is_low_precision(param_dtype) ? at::kFloat : param_dtype;
}

at::ScalarType state_dtype(at::ScalarType param_dtype,
                           const AdafactorOptions& options) {
  return options.fp32_state() && is_low_precision(param_dtype) ? at::kFloat
                                                               : param_dtype;
}

// torch.finfo(dtype).eps: the default eps1 of the torch variant, resolved for
// each parameter from its own dtype.
double dtype_eps(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return std::numeric_limits<float>::epsilon();
    case at::kDouble:
      return std::numeric_limits<double>::epsilon();
    case at::kHalf:
      return 0.0009765625;  // 2^-10
    case at::kBFloat16:
      return 0.0078125;  // 2^-7
    default:
      TORCH_CHECK_VALUE(false, "Adafactor needs floating-point parameters, got ",
                        t);
  }
}

// step += 1, in float32 as torch keeps it; without dispatching an ATen op
// for the usual 0-d CPU tensor (that would cost more than a small step).
double advance_step(at::Tensor& step) {
  if (step.device().is_cpu() && step.scalar_type() == at::kFloat && step.numel() == 1) {
    float* value = step.data_ptr<float>();
    *value += 1.0f;
    step.unsafeGetTensorImpl()->bump_version();
    return *value;
  }
  step.add_(1);
  return step.item<double>();
}

double rms(const at::Tensor& x) {
  return x.norm(2).item<double>() / std::sqrt(static_cast<double>(x.numel()));
}

// Round an fp32 tensor to bf16 so that the expected value is exact: add
// uniform noise below bf16's last bit, then truncate.
at::Tensor stochastic_round_to_bf16(const at::Tensor& x) {
  auto bits = x.contiguous().view(at::kInt);
  auto noise = at::randint_like(bits, 0, 1 << 16);
  auto rounded = bits.add(noise).bitwise_and_(static_cast<int32_t>(0xFFFF0000u));
  auto finite = x.isfinite();
  return at::where(finite, rounded.view(at::kFloat), x).to(at::kBFloat16);
}

// A state tensor in the compute dtype, and how to write it back.
struct Working {
  at::Tensor& stored;
  at::Tensor value;
  Working(at::Tensor& s, at::ScalarType dtype)
      : stored(s), value(s.scalar_type() == dtype ? s : s.to(dtype)) {}
  // Writes the value back; later arithmetic uses the value as stored (as
  // the fused kernel does), which differs only for low-precision state.
  void commit() {
    if (value.is_same(stored)) return;
    stored.copy_(value);
    value = stored.to(value.scalar_type());
  }
};

at::TensorOptions momentum_options(const at::Tensor& param, const AdafactorOptions& options) {
  return param.options().dtype(options.momentum_dtype() == MomentumDtype::BFloat16
                                   ? at::kBFloat16
                                   : state_dtype(param.scalar_type(), options));
}

void step_with_aten_ops(const at::Tensor& param, const at::Tensor& grad,
                        AdafactorParamState& state, const AdafactorOptions& options,
                        const detail::Dims& dims, const detail::StepNumbers& numbers);

}  // namespace

std::optional<std::pair<std::int64_t, std::int64_t>> adafactor_factored_dims(
    at::IntArrayRef sizes, const AdafactorOptions& options) {
  const auto n = static_cast<std::int64_t>(sizes.size());
  if (n < 2) return std::nullopt;
  std::int64_t a = n - 2, b = n - 1;
  const auto min_size = options.min_dim_size_to_factor();
  auto passes = [&](std::int64_t i, std::int64_t j) {
    return min_size <= 0 || (sizes[i] >= min_size && sizes[j] >= min_size);
  };
  if (options.factored_dims() == FactoredDims::LeadingTwo && n > 2 && passes(0, 1)) {
    return std::make_pair(std::int64_t{0}, std::int64_t{1});
  }
  if (options.factored_dims() == FactoredDims::LargestTwo) {
    std::vector<std::int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](auto i, auto j) {
      return sizes[i] < sizes[j];
    });
    a = std::min(order[n - 2], order[n - 1]);
    b = std::max(order[n - 2], order[n - 1]);
  }
  if (!passes(a, b)) return std::nullopt;
  return std::make_pair(a, b);
}

namespace {
// The factoring rule looks at the whole parameter, not at one shard of it.
detail::Dims dims_of(const at::Tensor& param, const AdafactorOptions& options,
                     const AdafactorShard* shard) {
  if (!shard) return adafactor_factored_dims(param.sizes(), options);
  TORCH_CHECK(static_cast<std::int64_t>(shard->global_sizes.size()) == param.dim(),
              "a shard of a ", shard->global_sizes.size(), "-d parameter has ",
              param.dim(), " dims");
  return adafactor_factored_dims(shard->global_sizes, options);
}
}  // namespace

void adafactor_init_state(const torch::Tensor& param,
                          const AdafactorOptions& options,
                          AdafactorParamState& state, const AdafactorShard* shard) {
  state.step(at::zeros({}, at::TensorOptions().dtype(at::kFloat)));
  const auto opts = param.options().dtype(state_dtype(param.scalar_type(), options));
  state.row_var({});
  state.col_var({});
  state.variance({});
  state.exp_avg({});
  if (auto dims = dims_of(param, options, shard)) {
    auto row_shape = param.sizes().vec();
    auto col_shape = param.sizes().vec();
    row_shape[dims->second] = 1;
    col_shape[dims->first] = 1;
    state.row_var(at::zeros(row_shape, opts));
    state.col_var(at::zeros(col_shape, opts));
  } else {
    state.variance(at::zeros(param.sizes(), opts));
  }
  if (options.beta1()) state.exp_avg(at::zeros(param.sizes(), momentum_options(param, options)));
}

void adafactor_check_state(const torch::Tensor& param, const AdafactorParamState& state,
                           const AdafactorOptions& options, const AdafactorShard* shard) {
  TORCH_CHECK(state.step().defined() && state.step().numel() == 1,
              "Adafactor state has no step count");
  // The parameter's shape, with dimension `reduced` (if any) of size 1. Compared
  // in place: the shape itself is built only for the message (this check runs
  // on every step of every parameter).
  auto expect = [&](const char* name, const at::Tensor& t, std::int64_t reduced) {
    TORCH_CHECK(t.defined(), "Adafactor state of a parameter of shape ", param.sizes(),
                " has no ", name);
    bool same = t.dim() == param.dim();
    for (std::int64_t d = 0; same && d < param.dim(); ++d) {
      same = t.size(d) == (d == reduced ? 1 : param.size(d));
    }
    if (!same) {
      auto shape = param.sizes().vec();
      if (reduced >= 0) shape[reduced] = 1;
      TORCH_CHECK(false, "Adafactor state ", name, " has shape ", t.sizes(),
                  " where a parameter of shape ", param.sizes(), " needs ", at::IntArrayRef(shape));
    }
    TORCH_CHECK(t.is_floating_point(), "Adafactor state ", name, " is not floating point");
  };
  if (auto dims = dims_of(param, options, shard)) {
    expect("row_var", state.row_var(), dims->second);
    expect("col_var", state.col_var(), dims->first);
  } else {
    expect("variance", state.variance(), -1);
  }
  if (state.exp_avg().defined()) expect("exp_avg", state.exp_avg(), -1);
}

namespace {
// Whether every gradient element is finite: a sum in double is finite
// exactly then (no overflow for float inputs), and needs no temporary.
bool all_finite(const at::Tensor& grad, const AdafactorShard* shard) {
  double bad = grad.numel() == 0 ? 0.0
               : std::isfinite(grad.sum(at::kDouble).item<double>()) ? 0.0 : 1.0;
  // Every shard must take the same decision, or the sums across them would
  // not line up.
  if (shard) shard->all_reduce_sum(&bad, 1);
  return bad == 0.0;
}
}  // namespace

bool adafactor_step(const torch::Tensor& param, const torch::Tensor& grad,
                    AdafactorParamState& state, const AdafactorOptions& options,
                    const AdafactorShard* shard) {
  TORCH_CHECK(!grad.is_sparse(), "Adafactor does not support sparse gradients");
  TORCH_CHECK(!param.is_complex(), "Adafactor does not support complex parameters");
  TORCH_CHECK_VALUE(param.is_floating_point(),
                    "Adafactor needs floating-point parameters, got ",
                    param.scalar_type());
  TORCH_CHECK(grad.sizes() == param.sizes(), "gradient shape ", grad.sizes(),
              " does not match parameter shape ", param.sizes());

  const auto dims = dims_of(param, options, shard);
  adafactor_check_state(param, state, options, shard);
  if (options.beta1() && !state.exp_avg().defined()) {
    // beta1 was turned on after the state was created.
    state.exp_avg(at::zeros(param.sizes(), momentum_options(param, options)));
  }

  if (options.skip_nan_updates() && !all_finite(grad, shard)) return false;
  const double t = advance_step(state.step());
  // An empty shard still takes part in the sums across shards.
  if (param.numel() == 0 && !shard) return true;

  const bool torch_variant = options.variant() == AdafactorVariant::Torch;
  detail::StepNumbers numbers;
  numbers.t = t;
  numbers.eps1 = options.eps1() ? *options.eps1()
                 : torch_variant ? dtype_eps(param.scalar_type())
                                 : 1e-30;
  numbers.rho = options.lr();
  if (options.relative_step()) {
    const double cap = options.warmup_init() ? 1e-6 * t : options.lr();
    numbers.rho = std::min(cap, 1.0 / std::sqrt(t));
  }
  // The second-moment schedule: beta2_t = min(1 - s^beta2_decay, cap) with
  // s = max(t - decay_offset, 1).
  const double s = options.decay_offset() > 0
                       ? std::max(t - static_cast<double>(options.decay_offset()), 1.0)
                       : t;
  const double power = std::pow(s, options.beta2_decay());
  const bool capped = options.beta2_cap().has_value();
  numbers.beta2 = capped ? std::min(*options.beta2_cap(), 1.0 - power) : 1.0 - power;
  numbers.lerp_weight = torch_variant && !capped ? power : 1.0 - numbers.beta2;
  const char* unsupported = detail::fused_unsupported(options, param.scalar_type());
  if (shard) {
    TORCH_CHECK(shard->all_reduce_sum, "a sharded Adafactor step needs a reducer");
    TORCH_CHECK(!unsupported, "a sharded Adafactor step does not support ", unsupported,
                " yet (it runs on the fused CPU kernel only)");
    TORCH_CHECK(detail::fused_step_applies(param, grad, state, dims),
                "a sharded Adafactor step runs on the fused CPU kernel only: float32, "
                "float64 or bfloat16 CPU tensors, contiguous");
    detail::fused_step(param, grad, state, options, dims, numbers, shard);
  } else if (!unsupported && detail::fused_step_applies(param, grad, state, dims)) {
    detail::fused_step(param, grad, state, options, dims, numbers);
  } else {
    step_with_aten_ops(param, grad, state, options, dims, numbers);
  }
  return true;
}

namespace {

// The same step as the fused kernel, in ATen ops: for other devices, dtypes,
// layouts, and the options the kernel does not handle yet. Its temporaries
// are the size of the parameter.
void step_with_aten_ops(const at::Tensor& param, const at::Tensor& grad,
                        AdafactorParamState& state, const AdafactorOptions& options,
                        const detail::Dims& dims, const detail::StepNumbers& numbers) {
  const double eps1 = numbers.eps1;
  const double rho = numbers.rho;
  const auto variant = options.variant();
  const bool torch_variant = variant == AdafactorVariant::Torch;
  const bool big_vision = variant == AdafactorVariant::BigVision;
  const auto mode = options.weight_decay_mode();
  const double wd = options.weight_decay();
  const auto cdt = compute_dtype(param.scalar_type());
  at::Tensor p = param.scalar_type() == cdt ? param : param.to(cdt);
  at::Tensor g = grad.to(cdt);
  if (options.maximize()) g = g.neg();
  // Coupled (L2) decay is part of the gradient from here on.
  if (mode == WeightDecayMode::Coupled && wd != 0) g = g.add(p, wd);

  const double scale =
      options.scale_parameter() ? std::max(options.eps2(), rms(p)) : 1.0;
  const double alpha = rho * scale;  // the paper's lr_t
  // Decoupled decay: p *= 1 - decay.
  double decay = 0;
  switch (mode) {
    case WeightDecayMode::Lr: decay = options.lr() * wd; break;
    case WeightDecayMode::LrT: decay = wd * alpha; break;
    case WeightDecayMode::Unscaled: decay = wd; break;
    case WeightDecayMode::Corrected: {
      const double lr = options.lr();
      decay = lr * lr / options.max_lr().value_or(lr) * wd;
      if (lr == 0) decay = 0;
      break;
    }
    case WeightDecayMode::Coupled: decay = 0; break;
  }

  if (torch_variant && decay != 0) p.mul_(1 - decay);

  at::Tensor update;  // G / sqrt(V), before clipping
  if (dims) {
    const auto [a, b] = *dims;
    Working row(state.row_var(), cdt), col(state.col_var(), cdt);
    at::Tensor v;
    if (torch_variant) {
      // mean(G^2) along a dim without a G-sized temporary, as torch does.
      const double w = numbers.lerp_weight;
      row.value.lerp_(at::norm(g, 2, {b}, true).square_().div_(g.size(b)), w);
      col.value.lerp_(at::norm(g, 2, {a}, true).square_().div_(g.size(a)), w);
      row.commit();
      col.commit();
      v = at::mul(row.value, col.value);
      v.div_(row.value.mean({a}, true).clamp_(eps1));
      update = v.clamp_(eps1 * eps1).rsqrt_().mul_(g);
    } else {
      const double beta2 = numbers.beta2;
      const at::Tensor q = g.square().add_(eps1);
      if (big_vision) {
        row.value.lerp_(q.mean({b}, true), numbers.lerp_weight);
        col.value.lerp_(q.mean({a}, true), numbers.lerp_weight);
      } else {
        row.value.mul_(beta2).add_(q.mean({b}, true), 1.0 - beta2);
        col.value.mul_(beta2).add_(q.mean({a}, true), 1.0 - beta2);
      }
      row.commit();
      col.commit();
      auto r_factor = row.value.div(row.value.mean({a}, true)).rsqrt_();
      update = at::mul(r_factor, col.value.rsqrt()).mul_(g);
    }
  } else {
    Working var(state.variance(), cdt);
    if (torch_variant) {
      var.value.lerp_(g * g, numbers.lerp_weight);
      var.commit();
      update = var.value.clone().clamp_(eps1 * eps1).rsqrt_().mul_(g);
    } else {
      const double beta2 = numbers.beta2;
      if (big_vision) {
        var.value.lerp_(g.square().add_(eps1), numbers.lerp_weight);
      } else {
        var.value.mul_(beta2).add_(g.square().add_(eps1), 1.0 - beta2);
      }
      var.commit();
      update = var.value.rsqrt().mul_(g);
    }
  }

  const double denom =
      options.d() ? std::max(1.0, rms(update) / *options.d()) : 1.0;
  const bool momentum = options.beta1().has_value();
  if (torch_variant && !momentum) {
    p.add_(update, -alpha / denom);
  } else {
    if (torch_variant) {
      update.mul_(alpha / denom);
    } else {
      update.div_(denom);
      if (!big_vision) update.mul_(alpha);
    }
    if (momentum) {
      const double beta1 = *options.beta1();
      if (options.momentum_dtype() == MomentumDtype::BFloat16) {
        // As the anchors' torch ops do it: the update rounded to the
        // momentum's dtype, lerp in its compute type, rounded back.
        at::Tensor& m = state.exp_avg();
        if (options.momentum_stochastic_rounding() && m.scalar_type() == at::kBFloat16) {
          auto mf = m.to(at::kFloat);
          mf.lerp_(update.to(m.scalar_type()).to(at::kFloat), 1.0 - beta1);
          m.copy_(stochastic_round_to_bf16(mf));
        } else {
          m.lerp_(update.to(m.scalar_type()), 1.0 - beta1);
        }
        update = m.to(cdt);
      } else {
        Working m(state.exp_avg(), cdt);
        m.value.mul_(beta1).add_(update, 1.0 - beta1);
        m.commit();
        update = m.value;
      }
      if (options.caution()) {
        auto mask = at::gt(update * g, 0).to(cdt);
        mask.div_(mask.mean().clamp_(1e-3));
        update = update * mask;
      }
    }
    if (big_vision) update = update * alpha;
    if (!torch_variant && decay != 0) {
      if (big_vision) {
        p.mul_(1 - decay);
      } else {
        p.add_(p, -decay);
      }
    }
    p.sub_(update);
  }

  if (!p.is_same(param)) {
    if (options.stochastic_rounding() && param.scalar_type() == at::kBFloat16) {
      param.copy_(stochastic_round_to_bf16(p));
    } else {
      param.copy_(p);
    }
  }
}

}  // namespace

}  // namespace tcltorch
