// The sum of param^2 that the fused step's last pass computes while it
// writes the new parameter, kept for the next step of the same tensor so
// that its first passes need not read the parameter again only for
// RMS(param). A kept sum is used only while the tensor is provably unchanged:
// the same TensorImpl (held by a weak reference, so its address cannot be
// reused), the same version counter value (every in-place write through the
// tensor, its views and its detach()ed aliases bumps it), data pointer,
// dtype, shape, and the same summation layout (the loops' block geometry).
// The kept sum is the one the next step would compute itself, bit for bit:
// the loops add param^2 in one fixed order per layout (kernel/loops.h), so a
// hit or a miss gives the same results. Which parameters keep a sum is the
// fused step's choice (keeps_param_sq in adafactor_fused.cpp).
//
// Writes that bypass the version counter (through `tensor.data`, NumPy or
// DLPack views, raw pointers) are not seen; set TCLTORCH_PARAM_SQ_CACHE=0 to
// turn the cache off for code that writes parameters that way between steps.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <optional>

namespace tcltorch::detail {

// The loops' summation layout of one parameter: which passes, over which
// view [O, n, K, m, L], cut into which blocks.
struct ParamSqLayout {
  std::int8_t kind = 0;  // the first pass: U1, G1 or F2 (kernel::Pass)
  std::array<std::int64_t, 7> numbers{};  // O, n, K, m, L, block_size, blocks
  bool operator==(const ParamSqLayout& o) const {
    return kind == o.kind && numbers == o.numbers;
  }
};

// Whether the cache is on (TCLTORCH_PARAM_SQ_CACHE, read once; default on).
bool param_sq_cache_enabled();
// The kept sum for `param` as it is now, if there is one for this layout.
std::optional<double> param_sq_lookup(const at::Tensor& param, const ParamSqLayout& layout);
// Keeps `sum` for `param` as it is now (call after the step's version bump).
void param_sq_store(const at::Tensor& param, const ParamSqLayout& layout, double sum);

}  // namespace tcltorch::detail
