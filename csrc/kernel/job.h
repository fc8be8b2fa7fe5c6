// The fused CPU step, as the vector loops see it: plain numbers and raw
// pointers, no ATen. adafactor_fused.cpp fills a Job from tensors and runs the
// passes block by block; loops.h holds the loops, compiled once per CPU
// instruction set (loops_base.cpp, loops_avx2.cpp, loops_avx512.cpp).
#pragma once

#include <cstdint>

namespace tcltorch::kernel {

// Element types the loops read and write. BF16 is stored as raw bits.
enum class Dtype : std::int8_t { F32, F64, BF16 };

// One pass over a range of blocks. Factored parameters take F1..F3,
// unfactored ones U1..U2.
enum class Pass : std::int8_t {
  F1,  // row sums and per-block column sums of G^2 (and, for matrices,
       // the weighted column sums and param^2)
  F2,  // sums of U^2 and of param^2, where F1's sums cannot stand in
  F3,  // apply the update
  U1,  // update the second moment in place, sums of param^2 and U^2
  U2,  // apply the update
  G1,  // small groups: statistics, state, sums of U^2 and param^2
  G2,  // small groups: apply the update
  C2,  // caution: apply the masked momentum (F3, U2 or G2 having updated
       // the momentum and counted the mask), element blocks
};

// Factored parameters whose factored matrices hold at most this many
// elements (n * m) take the small-group passes G1, G2 when each leading
// index can be a group of its own (K == L == 1, rows not split over shards).
constexpr std::int64_t kGroupMaxElems = 2048;
// Scratch the small-group passes need per thread (run's `scratch`): eight
// arrays of kGroupMaxElems doubles and a flag each.
constexpr std::int64_t kGroupScratchBytes = kGroupMaxElems * (8 * sizeof(double) + 1);

struct Job {
  Dtype param_dtype;  // of param and grad
  Dtype state_dtype;  // of variance and exp_avg (row/col factors are prepared
                      // by the caller in the compute type)

  // The parameter viewed as [O, n, K, m, L]: rows along n, columns along m.
  // Unfactored parameters use numel only.
  std::int64_t O = 1, n = 1, K = 1, m = 1, L = 1;
  std::int64_t numel = 0;

  // Blocks: fixed by the problem, never by the thread count, so that sums
  // (and so results) do not depend on how many threads run.
  std::int64_t block_size = 0;  // units (O*n*K), groups (O) or elements per block
  std::int64_t blocks = 0;

  // The algorithm, resolved to numbers for this step.
  bool torch_variant = true;  // eps1 floors V (else it joins G^2)
  bool stats_lerp = true;     // statistics lerp towards the new mean (torch,
                              // big_vision), else beta2*old + (1-beta2)*new
  bool big_vision = false;    // momentum on the unscaled update, alpha after
  bool momentum_bf16 = false;  // exp_avg is bf16 (momentum_dtype): lerp in
                               // float of bf16(u), rounded to nearest
  bool momentum_sr = false;    // ... or stochastically
  // Caution: the last pass (F3, U2, G2) updates the momentum and counts the
  // elements whose momentum agrees in sign with the gradient into
  // caution_count, leaving the parameter; C2 then applies the masked momentum
  // scaled by caution_scale.
  bool caution = false;
  std::int64_t* caution_count = nullptr;  // one per block of the last pass
  double caution_scale = 1;
  bool maximize = false;
  bool momentum = false;
  bool weight_decay = false;
  bool stochastic_rounding = false;  // bf16 params only
  bool clamp = false;  // torch variant: V is clamped somewhere (factored)
  double eps1 = 0;
  double lerp_weight = 0;  // torch: 1 - beta2_t
  double beta2 = 0;        // transformers
  double beta1 = 0;
  double decay_mult = 1;   // torch: 1 - lr * weight_decay
  double decay_coef = 0;   // transformers: -weight_decay * alpha
  double alpha = 0;        // step size of this step
  double denom = 1;        // max(1, RMS(U) / d)

  // Tensors (contiguous).
  void* param = nullptr;
  const void* grad = nullptr;
  void* variance = nullptr;  // unfactored
  void* exp_avg = nullptr;   // with momentum
  void* row_var = nullptr;   // small groups, and F1 with weighted_cols:
                             // [O*n], state dtype (F1: before this step)
  void* col_var = nullptr;   // small groups: [O*m]

  // Scratch owned by the caller.
  double* row_sums = nullptr;      // [O*n*K*L]
  // Column sums per block ([blocks][O*K*m*L]), or, when blocks are cut at
  // leading-index boundaries (cols_owned), one array whose disjoint ranges
  // the blocks own.
  bool cols_owned = false;
  double* col_partials = nullptr;
  // F1 of matrices (K == L == 1), where set: in col_partials' layout, per
  // column the sum over rows of G^2 / (the row's new statistic), which with
  // the column statistics gives the sum of U^2 without pass F2
  // (adafactor_fused.cpp, sum_of_u2_from_columns).
  double* weighted_cols = nullptr;
  // F1 of matrices (K == L == 1): also sum param^2 per block into param_sq,
  // in the order F2 would (so with the same bits), so that F2 may be left out.
  bool first_pass_param_sq = false;
  double* param_sq = nullptr;      // [blocks]
  double* update_sq = nullptr;     // [blocks]
  // The sum of param^2, for RMS(param). With param_sq_known the first
  // passes leave it (the caller has it, or needs none) and do not read the
  // parameter for it. With param_sq_next the last pass (F3, U2, G2) sums the
  // new parameter per block into it, in the order the first passes use, so
  // that the next step of an unchanged parameter can take it as known.
  bool param_sq_known = false;
  double* param_sq_next = nullptr;  // [blocks]
  // Row and column factors in the compute type (float, or double for F64):
  // R = rsqrt(row / mean_rows(row)), C = rsqrt(col); with `clamp`, the
  // ratios row / mean_rows(row) and col themselves.
  const void* row_factor = nullptr;  // [O*n*K*L]
  const void* col_factor = nullptr;  // [O*K*m*L]

  std::uint64_t seed = 0;  // stochastic rounding
  std::uint64_t momentum_seed = 0;
};

// The loops of one instruction set. `scratch`: kGroupScratchBytes for the
// passes G1 and G2 (aligned for double), else unused.
namespace base {
void run(const Job& job, Pass pass, std::int64_t block_begin, std::int64_t block_end,
         void* scratch);
}
namespace avx2 {
void run(const Job& job, Pass pass, std::int64_t block_begin, std::int64_t block_end,
         void* scratch);
}
namespace avx512 {
void run(const Job& job, Pass pass, std::int64_t block_begin, std::int64_t block_end,
         void* scratch);
}

}  // namespace tcltorch::kernel
