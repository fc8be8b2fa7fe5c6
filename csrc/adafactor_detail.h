// Internal to the core: the two implementations of one Adafactor step and
// what they share. adafactor_step() (adafactor_step.cpp) resolves the step's
// numbers and picks the fused CPU kernel when it applies, else the ATen-op
// path, which runs on any device.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "tcltorch/adafactor.h"

namespace tcltorch::detail {

using Dims = std::optional<std::pair<std::int64_t, std::int64_t>>;

// What every implementation needs beyond the options, resolved once.
struct StepNumbers {
  double t;     // this step's count, already incremented
  double eps1;  // resolved per parameter
  double rho;   // relative (or absolute) step size before parameter scaling
  // The second-moment schedule after decay_offset and beta2_cap: beta2_t,
  // and the lerp weight 1 - beta2_t (for torch's variant exactly t^decay
  // when the cap does not bite, as torch computes it).
  double beta2;
  double lerp_weight;
};

// The first option (by name) of `options` that the fused kernel does not
// handle yet, or nullptr; with one of them set, the step takes the ATen-op
// path (and a sharded step, which needs the kernel, is refused).
const char* fused_unsupported(const AdafactorOptions& options, c10::ScalarType param_dtype);

// True when the fused CPU kernel can run this step (CPU, float/double/bf16,
// contiguous tensors of the expected dtypes) and is enabled.
bool fused_step_applies(const at::Tensor& param, const at::Tensor& grad,
                        const AdafactorParamState& state, const Dims& dims);
// With `shard`, `param` is one shard of a parameter split along dim 0 and the
// sums the step needs are completed across the shards with its reducer.
void fused_step(const at::Tensor& param, const at::Tensor& grad,
                AdafactorParamState& state, const AdafactorOptions& options,
                const Dims& dims, const StepNumbers& numbers,
                const AdafactorShard* shard = nullptr);

// For tests and benchmarks: force the ATen-op path (false) or allow the
// fused kernel (true, the default). Process-wide.
TCLTORCH_API void set_fused_enabled(bool enabled);
TCLTORCH_API bool fused_enabled();
// The instruction set the fused loops use: "avx512", "avx2" or "default"
// (the TCLTORCH_CPU_CAPABILITY environment variable, set to one of these
// names, caps it; all give the same bits).
TCLTORCH_API std::string fused_cpu_capability();

}  // namespace tcltorch::detail
