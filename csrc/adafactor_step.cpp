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

void step_with_aten_ops(const at::Tensor& param, const at::Tensor& grad,
                        AdafactorParamState& state, const AdafactorOptions& options,
                        const detail::Dims& dims, const detail::StepNumbers& numbers);

}  // namespace

std::optional<std::pair<std::int64_t, std::int64_t>> adafactor_factored_dims(
    at::IntArrayRef sizes, const AdafactorOptions& options) {
  const auto n = static_cast<std::int64_t>(sizes.size());
  if (n < 2) return std::nullopt;
  std::int64_t a = n - 2, b = n - 1;
  if (options.factored_dims() == FactoredDims::LargestTwo) {
    std::vector<std::int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](auto i, auto j) {
      return sizes[i] < sizes[j];
    });
    a = std::min(order[n - 2], order[n - 1]);
    b = std::max(order[n - 2], order[n - 1]);
  }
  const auto min_size = options.min_dim_size_to_factor();
  if (min_size > 0 && (sizes[a] < min_size || sizes[b] < min_size)) {
    return std::nullopt;
  }
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
  if (options.beta1()) state.exp_avg(at::zeros(param.sizes(), opts));
}

void adafactor_check_state(const torch::Tensor& param, const AdafactorParamState& state,
                           const AdafactorOptions& options, const AdafactorShard* shard) {
  TORCH_CHECK(state.step().defined() && state.step().numel() == 1,
              "Adafactor state has no step count");
  auto expect = [&](const char* name, const at::Tensor& t, at::IntArrayRef shape) {
    TORCH_CHECK(t.defined(), "Adafactor state of a parameter of shape ", param.sizes(),
                " has no ", name);
    TORCH_CHECK(t.sizes() == shape, "Adafactor state ", name, " has shape ", t.sizes(),
                " where a parameter of shape ", param.sizes(), " needs ", shape);
    TORCH_CHECK(t.is_floating_point(), "Adafactor state ", name, " is not floating point");
  };
  if (auto dims = dims_of(param, options, shard)) {
    auto row_shape = param.sizes().vec();
    auto col_shape = param.sizes().vec();
    row_shape[dims->second] = 1;
    col_shape[dims->first] = 1;
    expect("row_var", state.row_var(), row_shape);
    expect("col_var", state.col_var(), col_shape);
  } else {
    expect("variance", state.variance(), param.sizes());
  }
  if (state.exp_avg().defined()) expect("exp_avg", state.exp_avg(), param.sizes());
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
    state.exp_avg(at::zeros(param.sizes(),
                            param.options().dtype(state_dtype(param.scalar_type(), options))));
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
  if (shard) {
    TORCH_CHECK(shard->all_reduce_sum, "a sharded Adafactor step needs a reducer");
    TORCH_CHECK(detail::fused_step_applies(param, grad, state, dims),
                "a sharded Adafactor step runs on the fused CPU kernel only: float32, "
                "float64 or bfloat16 CPU tensors, contiguous");
    detail::fused_step(param, grad, state, options, dims, numbers, shard);
  } else if (detail::fused_step_applies(param, grad, state, dims)) {
    detail::fused_step(param, grad, state, options, dims, numbers);
  } else {
    step_with_aten_ops(param, grad, state, options, dims, numbers);
  }
  return true;
}

namespace {

// The same step as the fused kernel, in ATen ops: for other devices, dtypes
// and layouts. Its temporaries are the size of the parameter.
void step_with_aten_ops(const at::Tensor& param, const at::Tensor& grad,
                        AdafactorParamState& state, const AdafactorOptions& options,
                        const detail::Dims& dims, const detail::StepNumbers& numbers) {
  const double t = numbers.t;
  const double eps1 = numbers.eps1;
  const double rho = numbers.rho;
  const bool torch_variant = options.variant() == AdafactorVariant::Torch;
  const auto cdt = compute_dtype(param.scalar_type());
  at::Tensor p = param.scalar_type() == cdt ? param : param.to(cdt);
  at::Tensor g = grad.to(cdt);
  if (options.maximize()) g = g.neg();

  const double scale =
      options.scale_parameter() ? std::max(options.eps2(), rms(p)) : 1.0;
  const double alpha = rho * scale;  // the paper's lr_t

  if (torch_variant && options.weight_decay() != 0) {
    p.mul_(1 - options.lr() * options.weight_decay());
  }

  at::Tensor update;  // G / sqrt(V), before clipping
  if (dims) {
    const auto [a, b] = *dims;
    Working row(state.row_var(), cdt), col(state.col_var(), cdt);
    at::Tensor v;
    if (torch_variant) {
      // mean(G^2) along a dim without a G-sized temporary, as torch does.
      const double w = std::pow(t, options.beta2_decay());
      row.value.lerp_(at::norm(g, 2, {b}, true).square_().div_(g.size(b)), w);
      col.value.lerp_(at::norm(g, 2, {a}, true).square_().div_(g.size(a)), w);
      row.commit();
      col.commit();
      v = at::mul(row.value, col.value);
      v.div_(row.value.mean({a}, true).clamp_(eps1));
      update = v.clamp_(eps1 * eps1).rsqrt_().mul_(g);
    } else {
      const double beta2 = 1.0 - std::pow(t, options.beta2_decay());
      const at::Tensor q = g.square().add_(eps1);
      row.value.mul_(beta2).add_(q.mean({b}, true), 1.0 - beta2);
      col.value.mul_(beta2).add_(q.mean({a}, true), 1.0 - beta2);
      row.commit();
      col.commit();
      auto r_factor = row.value.div(row.value.mean({a}, true)).rsqrt_();
      update = at::mul(r_factor, col.value.rsqrt()).mul_(g);
    }
  } else {
    Working var(state.variance(), cdt);
    if (torch_variant) {
      const double w = std::pow(t, options.beta2_decay());
      var.value.lerp_(g * g, w);
      var.commit();
      update = var.value.clone().clamp_(eps1 * eps1).rsqrt_().mul_(g);
    } else {
      const double beta2 = 1.0 - std::pow(t, options.beta2_decay());
      var.value.mul_(beta2).add_(g.square().add_(eps1), 1.0 - beta2);
      var.commit();
      update = var.value.rsqrt().mul_(g);
    }
  }

  const double denom = std::max(1.0, rms(update) / options.d());
  if (torch_variant && !options.beta1()) {
    p.add_(update, -alpha / denom);
  } else {
    if (torch_variant) {
      update.mul_(alpha / denom);
    } else {
      update.div_(denom).mul_(alpha);
    }
    if (options.beta1()) {
      Working m(state.exp_avg(), cdt);
      m.value.mul_(*options.beta1()).add_(update, 1.0 - *options.beta1());
      m.commit();
      update = m.value;
    }
    if (!torch_variant && options.weight_decay() != 0) {
      p.add_(p, -options.weight_decay() * alpha);
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
