// The fused CPU step: two passes over the gradient for large factored
// matrices (three where a middle pass must sum U^2 itself: see
// first_passes_factored), two for small ones (conv kernels: each leading
// index a group) and for unfactored parameters; scratch memory of O(rows + columns), or a
// few KiB per thread for small groups; blocks spread over ATen's thread
// pool. The loops are in kernel/loops.h; this file prepares the job,
// updates the (small) row and column statistics of large matrices between
// passes, and picks the loops compiled for the CPU at hand.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <algorithm>
#include <functional>
#include <iterator>
#include <limits>
#include <memory>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "adafactor_detail.h"
#include "kernel/job.h"
#include "param_sq_cache.h"

namespace tcltorch::detail {
namespace {

using kernel::Dtype;
using kernel::Job;
using kernel::Pass;

std::atomic<bool> g_fused_enabled{true};

using RunFn = void (*)(const Job&, Pass, std::int64_t, std::int64_t, void*);
using ReduceFn = std::function<void(double*, std::size_t)>;

// The copies of the loops, best first, and whether this CPU runs each.
struct LoopsCopy {
  const char* name;  // as TCLTORCH_CPU_CAPABILITY and fused_cpu_capability() spell it
  RunFn run;
  bool (*supported)();
};
bool cpu_has_avx2() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}
bool cpu_has_avx512() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}
constexpr LoopsCopy kLoopsCopies[] = {
    {"avx512", &kernel::avx512::run, &cpu_has_avx512},
    {"avx2", &kernel::avx2::run, &cpu_has_avx2},
    {"default", &kernel::base::run, [] { return true; }},
};

// Chosen once: the best copy this CPU runs, or, where TCLTORCH_CPU_CAPABILITY
// names a copy ("avx2", "default"), the best at or below that one.
const LoopsCopy& loops_copy() {
  static const LoopsCopy& chosen = []() -> const LoopsCopy& {
    const char* want = std::getenv("TCLTORCH_CPU_CAPABILITY");
    const auto named = [&](const LoopsCopy& c) { return want && std::strcmp(want, c.name) == 0; };
    bool reached = std::none_of(std::begin(kLoopsCopies), std::end(kLoopsCopies), named);
    for (const auto& c : kLoopsCopies) {
      reached = reached || named(c);
      if (reached && c.supported()) return c;
    }
    return kLoopsCopies[std::size(kLoopsCopies) - 1];
  }();
  return chosen;
}
RunFn loops() { return loops_copy().run; }

std::optional<Dtype> dtype_of(c10::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return Dtype::F32;
    case at::kDouble:
      return Dtype::F64;
    case at::kBFloat16:
      return Dtype::BF16;
    default:
      return std::nullopt;
  }
}

bool usable(const at::Tensor& t, c10::ScalarType dtype) {
  return t.defined() && t.device().is_cpu() && t.layout() == at::kStrided &&
         t.scalar_type() == dtype && t.is_contiguous() && !t.is_conj() && !t.is_neg();
}

// The small-group passes' scratch of this thread, allocated once: at 130 KB
// a fresh allocation per pass would come from mmap (glibc's threshold starts
// at 128 KB), and with it its page faults, for every small tensor.
double* group_scratch() {
  thread_local const std::unique_ptr<double[]> scratch(
      new double[kernel::kGroupScratchBytes / sizeof(double) + 1]);
  return scratch.get();
}

// Runs one pass over all blocks on ATen's threads.
void run_pass(const Job& job, Pass pass) {
  const RunFn run = loops();
  const bool groups = pass == Pass::G1 || pass == Pass::G2;
  // Blocks hold tens of thousands of elements: one block is enough work.
  at::parallel_for(0, job.blocks, 1, [&](std::int64_t b0, std::int64_t b1) {
    run(job, pass, b0, b1, groups ? group_scratch() : nullptr);
  });
}

double ordered_sum(const std::vector<double>& partials) {
  double s = 0;
  for (double x : partials) s += x;  // block order: independent of threads
  return s;
}

// A state element read or written in the compute type T.
template <class T, class S>
T get(const S* p, std::int64_t i) {
  return static_cast<T>(static_cast<float>(p[i]));
}
template <class T>
T get(const double* p, std::int64_t i) {
  return static_cast<T>(p[i]);
}
template <class T, class S>
void put(S* p, std::int64_t i, T v) {
  p[i] = static_cast<S>(v);
}

#include "kernel/statistic.h"  // lerp, advanced_statistic: see there why here

// Between passes 1 and 2 of a factored parameter, for the leading indices
// [o0, o1): the running row and column statistics, their normaliser, and the
// ratios row / mean_rows(row) and the column statistic, written into R and C.
// `rows_total` is the length of the row dimension over all shards; `reduce`,
// if set (one range over all of O), sums the normaliser's partial sums over
// the shards. The normaliser of each (o, k, l), floored as R uses it, goes
// into `means` [O*K*L]. Returns whether torch's floor V >= eps1^2 can bite
// here.
template <class T, class S>
bool prepare_range(const Job& job, AdafactorParamState& state,
                   const std::vector<double>& col_sums, std::int64_t rows_total,
                   const ReduceFn* reduce, T* R, T* C, T* means, std::int64_t o0,
                   std::int64_t o1) {
  S* row = static_cast<S*>(state.row_var().data_ptr());
  S* col = static_cast<S*>(state.col_var().data_ptr());
  const T w = static_cast<T>(job.lerp_weight);
  const T b2 = static_cast<T>(job.beta2), ob2 = static_cast<T>(1.0 - job.beta2);
  // Pass F1 repeats this for the rows (Factored::new_row_statistic).
  auto advance = [&](S* stat, std::int64_t idx, double sum, std::int64_t count) {
    const T mean = static_cast<T>(sum) / static_cast<T>(count);
    put<T>(stat, idx, advanced_statistic<T>(get<T>(stat, idx), mean, job.stats_lerp, w, b2, ob2));
  };
  const std::int64_t rows_per_o = job.n * job.K * job.L, cols_per_o = job.K * job.m * job.L;
  for (std::int64_t r = o0 * rows_per_o; r < o1 * rows_per_o; ++r) {
    advance(row, r, job.row_sums[r], job.m);
  }
  for (std::int64_t c = o0 * cols_per_o; c < o1 * cols_per_o; ++c) {
    advance(col, c, col_sums[c], rows_total);
  }

  // Per (o, k, l): the mean over rows of the row statistic.
  auto row_at = [&](std::int64_t o, std::int64_t i, std::int64_t k, std::int64_t l) {
    return ((o * job.n + i) * job.K + k) * job.L + l;
  };
  auto col_at = [&](std::int64_t o, std::int64_t j, std::int64_t k, std::int64_t l) {
    return ((o * job.K + k) * job.m + j) * job.L + l;
  };
  const std::int64_t groups_per_o = job.K * job.L;
  std::vector<double> sums((o1 - o0) * groups_per_o, 0.0);
  for (std::int64_t o = o0; o < o1; ++o) {
    for (std::int64_t k = 0; k < job.K; ++k) {
      for (std::int64_t l = 0; l < job.L; ++l) {
        double& sum = sums[((o - o0) * job.K + k) * job.L + l];
        for (std::int64_t i = 0; i < job.n; ++i) {
          sum += static_cast<double>(get<T>(row, row_at(o, i, k, l)));
        }
      }
    }
  }
  if (reduce) (*reduce)(sums.data(), sums.size());

  const T eps1 = static_cast<T>(job.eps1);
  const T inf = std::numeric_limits<T>::infinity();
  bool clamp = false;
  for (std::int64_t o = o0; o < o1; ++o) {
    for (std::int64_t k = 0; k < job.K; ++k) {
      for (std::int64_t l = 0; l < job.L; ++l) {
        T mean = static_cast<T>(sums[((o - o0) * job.K + k) * job.L + l]) /
                 static_cast<T>(rows_total);
        if (job.torch_variant && mean < eps1) mean = eps1;
        means[(o * job.K + k) * job.L + l] = mean;
        T min_ratio = inf, min_col = inf;
        for (std::int64_t i = 0; i < job.n; ++i) {
          const T ratio = get<T>(row, row_at(o, i, k, l)) / mean;
          R[row_at(o, i, k, l)] = ratio;
          min_ratio = std::min(min_ratio, ratio);
        }
        for (std::int64_t j = 0; j < job.m; ++j) {
          const T c = get<T>(col, col_at(o, j, k, l));
          C[col_at(o, j, k, l)] = c;
          min_col = std::min(min_col, c);
        }
        // torch floors V at eps1^2; where that floor can bite, the loops
        // compute V element by element instead of as R * C.
        if (job.torch_variant && !(min_ratio * min_col >= eps1 * eps1)) clamp = true;
      }
    }
  }
  return clamp;
}

// All of prepare_range, then R and C become the factors rsqrt(ratio) and
// rsqrt(col) unless some V may be floored. With blocks that own their
// leading indices, the blocks' ranges are prepared in parallel.
template <class T, class S>
void prepare_factors(Job& job, AdafactorParamState& state,
                     const std::vector<double>& col_sums, std::int64_t rows_total,
                     const ReduceFn* reduce, std::vector<T>& R, std::vector<T>& C,
                     std::vector<T>& means) {
  R.resize(job.O * job.n * job.K * job.L);
  C.resize(job.O * job.K * job.m * job.L);
  means.resize(job.O * job.K * job.L);
  bool clamp = false;
  if (job.cols_owned && !reduce) {
    const std::int64_t o_per_block = job.block_size / (job.n * job.K);
    std::vector<char> clamps(job.blocks, 0);
    at::parallel_for(0, job.blocks, 1, [&](std::int64_t b0, std::int64_t b1) {
      for (std::int64_t b = b0; b < b1; ++b) {
        const std::int64_t o0 = b * o_per_block, o1 = std::min(job.O, o0 + o_per_block);
        clamps[b] = prepare_range<T, S>(job, state, col_sums, rows_total, nullptr, R.data(),
                                        C.data(), means.data(), o0, o1);
      }
    });
    for (char c : clamps) clamp = clamp || c;
  } else {
    clamp = prepare_range<T, S>(job, state, col_sums, rows_total, reduce, R.data(), C.data(),
                                means.data(), 0, job.O);
  }
  job.clamp = clamp;
  if (!clamp) {
    at::parallel_for(0, static_cast<std::int64_t>(R.size()), 1 << 16,
                     [&](std::int64_t i0, std::int64_t i1) {
                       for (auto i = i0; i < i1; ++i) R[i] = T(1) / std::sqrt(R[i]);
                     });
    at::parallel_for(0, static_cast<std::int64_t>(C.size()), 1 << 16,
                     [&](std::int64_t i0, std::int64_t i1) {
                       for (auto i = i0; i < i1; ++i) C[i] = T(1) / std::sqrt(C[i]);
                     });
  }
  job.row_factor = R.data();
  job.col_factor = C.data();
}

// The sum of U^2 of matrices (K == L == 1) where no V is clamped, without
// reading the gradient again: U_ij = g_ij * rsqrt(r_i / mean) * rsqrt(c_j),
// so sum U^2 = sum_o mean_o * sum_j (sum_i g_ij^2 / r_i) / c_j, where the
// inner sums are pass F1's weighted columns (Job::weighted_cols) and r, c
// the new statistics. It equals pass F2's sum to rounding (F2 squares U as
// pass F3 forms it); only max(1, RMS(U) / d) depends on it. Fixed order,
// in double.
template <class T, class S>
double sum_of_u2_from_columns(const Job& job, const AdafactorParamState& state,
                              const std::vector<double>& weighted, const std::vector<T>& means) {
  const S* col = static_cast<const S*>(state.col_var().data_ptr());
  double total = 0;
  for (std::int64_t o = 0; o < job.O; ++o) {
    double sum = 0;
    for (std::int64_t j = o * job.m; j < (o + 1) * job.m; ++j) {
      sum += weighted[j] / static_cast<double>(get<T>(col, j));
    }
    total += static_cast<double>(means[o]) * sum;
  }
  return total;
}

// What the passes of one step share: owned here, pointed to by the Job.
struct Scratch {
  std::vector<double> param_sq, update_sq;  // per block
  std::vector<double> param_sq_next;        // per block, the new parameter's
  std::vector<double> row_sums, col_partials, col_sums;
  std::vector<double> weighted_partials, weighted_sums;  // Job::weighted_cols
  std::vector<float> Rf, Cf, Mf;  // factors, normalisers (float compute)
  std::vector<double> Rd, Cd, Md;  // factors, normalisers (double compute)
};

// The sum of param^2 this step needs (RMS(param), with scale_parameter):
// kept from the last step of the same, unchanged tensor (param_sq_cache.h),
// or summed by the first passes; and whether the last pass sums the new
// parameter for the next step.
struct ParamSq {
  const at::Tensor* param = nullptr;
  bool needed = true;   // scale_parameter
  // The kept sum is looked up and the last pass sums the new parameter for
  // the next step (see keeps_param_sq).
  bool produce = false;
  ParamSqLayout layout;
  std::optional<double> kept;
};

// Called once the first pass's blocks are set: per-block sums, and the
// kept sum if there is one for this layout.
void per_block_sums(Job& job, Scratch& scratch, Pass first, ParamSq& psq) {
  scratch.param_sq.assign(job.blocks, 0.0);
  scratch.update_sq.resize(job.blocks);
  job.param_sq = scratch.param_sq.data();
  job.update_sq = scratch.update_sq.data();
  psq.layout.kind = static_cast<std::int8_t>(first);
  psq.layout.numbers = {job.O, job.n, job.K, job.m, job.L, job.block_size, job.blocks};
  if (!psq.needed) {
    job.param_sq_known = true;
    return;
  }
  if (!psq.produce) return;
  psq.kept = param_sq_lookup(*psq.param, psq.layout);
  job.param_sq_known = psq.kept.has_value();
  scratch.param_sq_next.assign(job.blocks, 0.0);
  job.param_sq_next = scratch.param_sq_next.data();
}

// Whether a parameter keeps its sum of param^2 from step to step: factored
// parameters of more than kGroupMaxElems elements. For them the kept sum
// saves streaming the parameter from memory once more in the first pass.
// For a small matrix (one group) the first pass's read of it costs next to
// nothing (the last pass reads it again from cache), while the table's
// lookup and store (a lock, a hash probe, entries scattered over the heap,
// per tensor and step) cost more, and more the more fragmented the heap is;
// for unfactored parameters U1 reads it alongside the gradient and the
// second moment, and the last pass's sum costs about as much as that read.
// Measured on this machine at 1 thread (2026-12-03): 1000 x 32x32, sets made
// after larger ones were freed, 1.30-1.51 ms a step kept, 1.13-1.27 ms not;
// 4 x 256x256x3x3 1.98 ms kept, 2.62 ms not; 100 x 128x128 0.97 / 1.23 ms;
// 4 x 1M-element vectors 3-14% faster not kept.
bool keeps_param_sq(std::int64_t numel, bool factored) {
  return factored && numel > kernel::kGroupMaxElems;
}

// The parameter seen as [O, n, K, m, L], rows along dimension a, columns
// along b.
void view_factored(Job& job, at::IntArrayRef sizes, std::pair<std::int64_t, std::int64_t> dims) {
  const auto [a, b] = dims;
  auto prod = [&](std::int64_t from, std::int64_t to) {
    std::int64_t p = 1;
    for (auto d = from; d < to; ++d) p *= sizes[d];
    return p;
  };
  job.O = prod(0, a);
  job.n = sizes[a];
  job.K = prod(a + 1, b);
  job.m = sizes[b];
  job.L = prod(b + 1, static_cast<std::int64_t>(sizes.size()));
}

// Unfactored: U1 updates the second moment and sums param^2 and U^2.
void first_pass_unfactored(Job& job, AdafactorParamState& state, Scratch& scratch,
                           ParamSq& psq) {
  job.variance = state.variance().data_ptr();
  job.block_size = 16384;
  job.blocks = (job.numel + job.block_size - 1) / job.block_size;
  per_block_sums(job, scratch, Pass::U1, psq);
  run_pass(job, Pass::U1);
  state.variance().unsafeGetTensorImpl()->bump_version();
}

// Small matrices, one per leading index: G1 does statistics, state and
// sums in one pass over blocks of whole groups (at least ~32K elements,
// at most 16 blocks).
void first_pass_groups(Job& job, AdafactorParamState& state, Scratch& scratch, ParamSq& psq) {
  const std::int64_t want = std::min(std::clamp<std::int64_t>(job.numel / 32768, 1, 16),
                                     std::max<std::int64_t>(job.O, 1));
  job.block_size = (job.O + want - 1) / want;
  job.blocks = job.O == 0 ? 0 : (job.O + job.block_size - 1) / job.block_size;
  job.row_var = state.row_var().data_ptr();
  job.col_var = state.col_var().data_ptr();
  per_block_sums(job, scratch, Pass::G1, psq);
  run_pass(job, Pass::G1);
  state.row_var().unsafeGetTensorImpl()->bump_version();
  state.col_var().unsafeGetTensorImpl()->bump_version();
}

// Large matrices: F1 (row and column sums), the statistics and factors in
// between, F2 (sums of U^2 and param^2). Matrices (K == L == 1, unsharded)
// leave F2 out unless some V is clamped: F1 sums param^2 if it is not kept,
// and the sum of U^2 comes from F1's weighted columns
// (sum_of_u2_from_columns), so the gradient is read twice per step, not
// three times. Which sum of U^2 a step takes depends only on the problem
// and this step's clamping, never on whether param^2 was kept, so that both
// give the same bits.
void first_passes_factored(Job& job, AdafactorParamState& state, const AdafactorShard* shard,
                           bool rows_split, bool need_update_sq, Scratch& scratch,
                           ParamSq& psq) {
  const ReduceFn* reduce = shard ? &shard->all_reduce_sum : nullptr;
  const std::int64_t units = job.O * job.n * job.K;
  const std::int64_t cols = job.O * job.K * job.m * job.L;
  // At most 16 blocks of at least ~32K elements each: enough parallelism
  // for a few cores, and column partials of at most 16 x cols doubles. A
  // shard may be empty: no blocks, but it still takes part in the sums.
  const std::int64_t want = std::min(std::clamp<std::int64_t>(job.numel / 32768, 1, 16),
                                     std::max<std::int64_t>(units, 1));
  // With enough leading indices (conv weights: [out, in, kh, kw]), blocks
  // take whole ones and own their columns: no per-block copies of them.
  job.cols_owned = job.O > 1 && job.O >= want;
  if (job.cols_owned) {
    job.block_size = ((job.O + want - 1) / want) * job.n * job.K;
  } else {
    job.block_size = std::max<std::int64_t>((units + want - 1) / want, 1);
  }
  job.blocks = (units + job.block_size - 1) / job.block_size;
  scratch.row_sums.resize(units * job.L);
  const std::int64_t col_copies = job.cols_owned ? 1 : job.blocks;
  scratch.col_partials.resize(col_copies * cols);
  job.row_sums = scratch.row_sums.data();
  job.col_partials = scratch.col_partials.data();
  per_block_sums(job, scratch, Pass::F2, psq);
  // Sharded, F2 stays: the weighted columns would need reducing too.
  const bool two_passes = job.K == 1 && job.L == 1 && !shard && job.blocks > 0;
  const bool weigh = two_passes && need_update_sq;
  if (weigh) {
    scratch.weighted_partials.resize(col_copies * cols);
    job.weighted_cols = scratch.weighted_partials.data();
    job.row_var = state.row_var().data_ptr();
  }
  if (two_passes && !job.param_sq_known) {
    job.first_pass_param_sq = true;
    job.param_sq_known = true;  // for F2, if it runs: F1 has summed it
  }

  run_pass(job, Pass::F1);
  // Column sums over the blocks, in block order.
  auto add_partials = [&](const std::vector<double>& partials, std::vector<double>& sums) {
    sums.assign(cols, 0.0);
    for (std::int64_t blk = 0; blk < col_copies && job.blocks > 0; ++blk) {
      const double* part = partials.data() + blk * cols;
      for (std::int64_t c = 0; c < cols; ++c) sums[c] += part[c];
    }
  };
  auto& col_sums = scratch.col_sums;
  add_partials(scratch.col_partials, col_sums);
  if (weigh) add_partials(scratch.weighted_partials, scratch.weighted_sums);
  const std::int64_t rows_total = rows_split ? shard->global_sizes[0] : job.n;
  if (rows_split) (*reduce)(col_sums.data(), col_sums.size());
  const ReduceFn* row_reduce = rows_split ? reduce : nullptr;
  double u2 = 0;  // with `weigh` and no clamping: the sum of U^2
  if (job.param_dtype == Dtype::F64) {
    prepare_factors<double, double>(job, state, col_sums, rows_total, row_reduce, scratch.Rd,
                                    scratch.Cd, scratch.Md);
    if (weigh && !job.clamp) {
      u2 = sum_of_u2_from_columns<double, double>(job, state, scratch.weighted_sums, scratch.Md);
    }
  } else if (job.state_dtype == Dtype::F32) {
    prepare_factors<float, float>(job, state, col_sums, rows_total, row_reduce, scratch.Rf,
                                  scratch.Cf, scratch.Mf);
    if (weigh && !job.clamp) {
      u2 = sum_of_u2_from_columns<float, float>(job, state, scratch.weighted_sums, scratch.Mf);
    }
  } else {
    prepare_factors<float, c10::BFloat16>(job, state, col_sums, rows_total, row_reduce,
                                          scratch.Rf, scratch.Cf, scratch.Mf);
    if (weigh && !job.clamp) {
      u2 = sum_of_u2_from_columns<float, c10::BFloat16>(job, state, scratch.weighted_sums,
                                                        scratch.Mf);
    }
  }
  state.row_var().unsafeGetTensorImpl()->bump_version();
  state.col_var().unsafeGetTensorImpl()->bump_version();
  // Not finite (a statistic that underflowed, say): F2 sums U as F3 forms it.
  const bool from_columns = weigh && !job.clamp && std::isfinite(u2);
  // (Without a threshold d no sum of U^2 is needed at all.)
  if ((two_passes && from_columns) || (!need_update_sq && job.param_sq_known)) {
    std::fill(scratch.update_sq.begin(), scratch.update_sq.end(), 0.0);
    if (from_columns) scratch.update_sq[0] = u2;
    return;
  }
  run_pass(job, Pass::F2);
}

std::uint64_t rounding_seed() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get<at::CPUGeneratorImpl>()->random64();
}

}  // namespace

// Options whose arithmetic the loops do not have: the ATen-op path computes
// them (docs/algorithm.md lists them).
const char* fused_unsupported(const AdafactorOptions& options, c10::ScalarType param_dtype) {
  // The coupled gradient G + wd * p is formed in the compute type (float
  // for bf16 parameters), which the loops would have to read for G.
  if (options.weight_decay() != 0 &&
      options.weight_decay_mode() == WeightDecayMode::Coupled &&
      param_dtype == at::kBFloat16) {
    return "weight_decay_mode=\"coupled\" with bfloat16 parameters";
  }
  return nullptr;
}

void set_fused_enabled(bool enabled) { g_fused_enabled.store(enabled); }
bool fused_enabled() { return g_fused_enabled.load(); }
std::string fused_cpu_capability() {
  return loops_copy().name;
}

bool fused_step_applies(const at::Tensor& param, const at::Tensor& grad,
                        const AdafactorParamState& state, const Dims& dims) {
  if (!fused_enabled()) return false;
  const auto pd = param.scalar_type();
  if (!dtype_of(pd) || !usable(param, pd) || !usable(grad, pd)) return false;
  // State: the parameter's dtype, or fp32 for bf16 parameters.
  const auto sd = dims ? state.row_var().scalar_type() : state.variance().scalar_type();
  if (sd != pd && !(pd == at::kBFloat16 && sd == at::kFloat)) return false;
  if (dims ? !(usable(state.row_var(), sd) && usable(state.col_var(), sd))
           : !usable(state.variance(), sd)) {
    return false;
  }
  // exp_avg: the state dtype, or bf16 (momentum_dtype).
  return !state.exp_avg().defined() || usable(state.exp_avg(), sd) ||
         usable(state.exp_avg(), at::kBFloat16);
}

void fused_step(const at::Tensor& param, const at::Tensor& grad,
                AdafactorParamState& state, const AdafactorOptions& options,
                const Dims& dims, const StepNumbers& numbers, const AdafactorShard* shard) {
  const ReduceFn* reduce = shard ? &shard->all_reduce_sum : nullptr;
  Job job;
  job.param_dtype = *dtype_of(param.scalar_type());
  const auto state_scalar = dims ? state.row_var().scalar_type() : state.variance().scalar_type();
  job.state_dtype = *dtype_of(state_scalar);
  job.numel = param.numel();
  job.torch_variant = options.variant() == AdafactorVariant::Torch;
  job.big_vision = options.variant() == AdafactorVariant::BigVision;
  job.stats_lerp = job.torch_variant || job.big_vision;
  job.maximize = options.maximize();
  job.momentum = options.beta1().has_value();
  job.momentum_bf16 = job.momentum && state.exp_avg().defined() &&
                      state.exp_avg().scalar_type() == at::kBFloat16 &&
                      (options.momentum_dtype() == MomentumDtype::BFloat16 || state_scalar != at::kBFloat16);
  job.momentum_sr = job.momentum_bf16 && options.momentum_stochastic_rounding();
  job.caution = job.momentum && options.caution();
  job.beta1 = options.beta1().value_or(0.0);
  job.eps1 = numbers.eps1;
  job.lerp_weight = numbers.lerp_weight;
  job.beta2 = numbers.beta2;
  job.weight_decay = options.weight_decay() != 0;
  job.stochastic_rounding =
      options.stochastic_rounding() && param.scalar_type() == at::kBFloat16;
  if (job.stochastic_rounding) job.seed = rounding_seed();
  if (job.momentum_sr) job.momentum_seed = rounding_seed();
  job.param = param.data_ptr();
  job.grad = grad.data_ptr();
  // Coupled decay: the loops read G + wd * p (signed) as the gradient.
  at::Tensor coupled;
  if (options.weight_decay() != 0 &&
      options.weight_decay_mode() == WeightDecayMode::Coupled) {
    coupled = (options.maximize() ? grad.neg() : grad).add(param, options.weight_decay());
    job.grad = coupled.data_ptr();
    job.maximize = false;
  }
  job.exp_avg = state.exp_avg().defined() ? state.exp_avg().data_ptr() : nullptr;

  Scratch scratch;
  ParamSq psq;
  psq.param = &param;
  psq.needed = options.scale_parameter();
  // Caution leaves the parameter to pass C2, whose blocks differ.
  psq.produce = psq.needed && !job.caution && param_sq_cache_enabled() && job.numel > 0 &&
                param.unsafeGetTensorImpl()->version_counter().enabled() &&
                keeps_param_sq(job.numel, dims.has_value());
  Pass last = Pass::U2;
  if (!dims) {
    first_pass_unfactored(job, state, scratch, psq);
  } else {
    view_factored(job, param.sizes(), *dims);
    // Sharded along the row dimension, columns span the shards; sharded
    // along an earlier dimension, only the parameter-wide sums do.
    const bool rows_split = shard && dims->first == 0;
    if (job.K == 1 && job.L == 1 && job.n * job.m <= kernel::kGroupMaxElems && !rows_split) {
      first_pass_groups(job, state, scratch, psq);
      last = Pass::G2;
    } else {
      first_passes_factored(job, state, shard, rows_split, options.d().has_value(), scratch,
                            psq);
      last = Pass::F3;
    }
  }
  double sums[2] = {psq.kept ? *psq.kept : ordered_sum(scratch.param_sq),
                    ordered_sum(scratch.update_sq)};
  if (reduce) (*reduce)(sums, 2);
  const double param_sq_total = sums[0], update_sq_total = sums[1];

  // The same formulas as torch.optim.Adafactor, in double, over the whole
  // parameter (all shards).
  double numel_total = static_cast<double>(job.numel);
  if (shard) {
    numel_total = 1;
    for (auto d : shard->global_sizes) numel_total *= static_cast<double>(d);
  }
  const double root_n = std::sqrt(numel_total);
  const double param_rms = std::sqrt(param_sq_total) / root_n;
  const double scale = options.scale_parameter() ? std::max(options.eps2(), param_rms) : 1.0;
  job.alpha = numbers.rho * scale;
  job.denom = options.d()
                  ? std::max(1.0, std::sqrt(update_sq_total) / (root_n * *options.d()))
                  : 1.0;
  // Decoupled decay p *= 1 - c (torch's form) or p += p * -c (transformers').
  const double wd = options.weight_decay(), lr = options.lr();
  double c = 0;
  switch (options.weight_decay_mode()) {
    case WeightDecayMode::Lr: c = lr * wd; break;
    case WeightDecayMode::LrT: c = wd * job.alpha; break;
    case WeightDecayMode::Unscaled: c = wd; break;
    case WeightDecayMode::Corrected: c = lr == 0 ? 0 : lr * lr / options.max_lr().value_or(lr) * wd; break;
    case WeightDecayMode::Coupled: c = 0; break;  // not here (fused_unsupported)
  }
  job.weight_decay = c != 0;
  job.decay_mult = 1 - c;
  job.decay_coef = -c;

  std::vector<std::int64_t> caution_counts;
  if (job.caution) {
    caution_counts.assign(std::max<std::int64_t>(job.blocks, 1), 0);
    job.caution_count = caution_counts.data();
  }
  run_pass(job, last);
  if (job.caution) {
    // The kept fraction over the whole parameter, then the masked momentum,
    // with the scale rounded as torch computes it: 1 / max(mean(mask), 1e-3)
    // in the compute type.
    double kept = 0;
    for (auto c : caution_counts) kept += static_cast<double>(c);
    if (reduce) (*reduce)(&kept, 1);
    if (job.param_dtype == Dtype::F64) {
      job.caution_scale = 1.0 / std::max(kept / numel_total, 1e-3);
    } else {
      const float mean = static_cast<float>(kept) / static_cast<float>(numel_total);
      job.caution_scale = 1.0f / std::max(mean, static_cast<float>(1e-3));
    }
    job.block_size = 16384;
    job.blocks = (job.numel + job.block_size - 1) / job.block_size;
    run_pass(job, Pass::C2);
  }
  param.unsafeGetTensorImpl()->bump_version();
  if (job.exp_avg) state.exp_avg().unsafeGetTensorImpl()->bump_version();
  if (job.param_sq_next) {
    param_sq_store(param, psq.layout, ordered_sum(scratch.param_sq_next));
  }
}

}  // namespace tcltorch::detail
