// The loops of the fused step, compiled once per instruction set: a .cpp
// defines TCLTORCH_KERNEL_NS and includes this file. Everything here lives in
// that namespace and uses no library code, so the copies built with different
// compiler flags never share a symbol.
//
// Sums run in double over 8 interleaved lanes in a fixed order, so results do
// not depend on the instruction set or on the number of threads.
#ifndef TCLTORCH_KERNEL_NS
#error "define TCLTORCH_KERNEL_NS before including loops.h"
#endif

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "job.h"

namespace tcltorch::kernel::TCLTORCH_KERNEL_NS {
namespace {

using i64 = std::int64_t;
constexpr int kLanes = 8;
// Runs of this many elements of a row are summed in the compute type before
// joining a double sum.
constexpr i64 kRun = 16 * kLanes;
// Rows of a large matrix taken together in passes 2 and 3: one at a time,
// in memory order. Pass 1 takes kRowsF1 rows at once, spread over the block
// (eight streams). Which is faster depends on the machine
// (benchmarks/cpp/row_streams.cpp times the patterns): on an AMD EPYC
// (2026-12-02) several rows at once took twice as long as one, in the sums
// and in the update; on an Intel Xeon with AVX-512 (2026-12-03) eight rows
// spread summed 1.5x as fast as one row, and the update of four rows ran
// about as fast as one. The choice is fixed here, not made at run time,
// because it sets the order of the column sums, and so the bits.
constexpr int kRows2 = 1;
constexpr int kRows3 = 1;
constexpr int kRowsF1 = 8;
// Rows of a small matrix (Groups, from cache) taken together in its first
// pass (kRows1) and in its sums of U^2 and its update (kGroupRows): fewer
// calls per row, and more independent adds.
constexpr int kRows1 = 8;
constexpr int kGroupRows = 4;
// Small-group batches (see Groups): elements per batch.
constexpr i64 kBatchElems = kGroupMaxElems;

// Caution: elements of the block being run whose new momentum agrees in
// sign with the gradient (integers: the total is independent of order).
thread_local i64 tl_caution = 0;

// ---------------------------------------------------------------- values
struct bf16 {
  std::uint16_t bits;
};

inline float to_float(bf16 x) {
  const std::uint32_t u = static_cast<std::uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Round to nearest even, as torch's .to(torch.bfloat16) does.
inline bf16 to_bf16(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if (f != f) return bf16{static_cast<std::uint16_t>((u >> 16) | 0x0040u)};
  u += 0x7FFFu + ((u >> 16) & 1u);
  return bf16{static_cast<std::uint16_t>(u >> 16)};
}

// Stochastic rounding: add 16 random bits below bf16's last bit, truncate.
inline std::uint64_t mix(std::uint64_t x) {  // splitmix64 finaliser
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
inline bf16 to_bf16_stochastic(float f, std::uint64_t seed, i64 index) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7F800000u) == 0x7F800000u) return to_bf16(f);  // inf, nan
  const auto noise = static_cast<std::uint32_t>(mix(seed ^ static_cast<std::uint64_t>(index)) & 0xFFFFu);
  u += noise;
  return bf16{static_cast<std::uint16_t>(u >> 16)};
}

template <class T>
struct Compute {
  using type = float;
};
template <>
struct Compute<double> {
  using type = double;
};

template <class T, class X>
inline T load(const X* p, i64 i) {
  return static_cast<T>(p[i]);
}
template <class T>
inline T load(const bf16* p, i64 i) {
  return static_cast<T>(to_float(p[i]));
}

template <class T, class X>
inline void store(X* p, i64 i, T v) {
  p[i] = static_cast<X>(v);
}
template <class T>
inline void store(bf16* p, i64 i, T v) {
  p[i] = to_bf16(static_cast<float>(v));
}

template <class A>
inline double lane_sum(const A* lanes) {
  double s = 0;
  for (int l = 0; l < kLanes; ++l) s += lanes[l];
  return s;
}

#include "statistic.h"  // lerp, advanced_statistic: see there why here

template <class T>
inline T rsqrt(T x) {
  return T(1) / std::sqrt(x);
}

// torch's U where V is formed element by element: g / sqrt(max(V, eps1^2)).
template <class T>
inline T floored_update(T g, T v, T eps1) {
  return g * rsqrt(v > eps1 * eps1 ? v : eps1 * eps1);
}

// ---------------------------------------------------------------- vectors
// Eight lanes of the compute type, with GCC/Clang vector extensions: one
// AVX2 register for float under -mavx2, two SSE registers otherwise. The lane
// arithmetic is the same either way, and so are the results.
template <class T>
struct Lanes;
template <>
struct Lanes<float> {
  typedef float type __attribute__((vector_size(kLanes * sizeof(float))));
};
template <>
struct Lanes<double> {
  typedef double type __attribute__((vector_size(kLanes * sizeof(double))));
};
template <class T>
using vec = typename Lanes<T>::type;
using u16x8 = std::uint16_t __attribute__((vector_size(16)));
using u32x8 = std::uint32_t __attribute__((vector_size(32)));
using i32x8 = std::int32_t __attribute__((vector_size(32)));

template <class T, class X>
inline vec<T> vload(const X* p) {
  vec<T> v;
  if constexpr (std::is_same_v<X, bf16>) {
    u16x8 b;
    std::memcpy(&b, p, sizeof b);
    const u32x8 w = __builtin_convertvector(b, u32x8) << 16;
    std::memcpy(&v, &w, sizeof v);
  } else {
    std::memcpy(&v, p, sizeof v);
  }
  return v;
}

template <class T, class X>
inline void vstore(X* p, vec<T> v) {
  if constexpr (std::is_same_v<X, bf16>) {  // round to nearest even, as to_bf16
    u32x8 u;
    std::memcpy(&u, &v, sizeof u);
    const u32x8 rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    const u32x8 quiet = (u >> 16) | 0x0040u;
    const i32x8 nan = v != v;
    const u32x8 out = nan ? quiet : rounded;
    const u16x8 bits = __builtin_convertvector(out, u16x8);
    std::memcpy(p, &bits, sizeof bits);
  } else {
    std::memcpy(p, &v, sizeof v);
  }
}

// Eight per-lane double sums, held as two four-lane vectors: what AVX2 holds
// in two registers (GCC handles a 64-byte vector through memory).
typedef double d4 __attribute__((vector_size(4 * sizeof(double))));
// Lanes 0-3 (Half 0) or 4-7 (Half 1) of v, in double (exact). Under AVX one
// conversion of four lanes: GCC lowers __builtin_convertvector of four
// floats to four doubles as two conversions of two and an insert.
template <int Half>
inline d4 widen(vec<float> v) {
  typedef float f4 __attribute__((vector_size(4 * sizeof(float))));
  const f4 h = __builtin_shufflevector(v, v, 4 * Half, 4 * Half + 1, 4 * Half + 2, 4 * Half + 3);
#if defined(__AVX__)
  return __builtin_ia32_cvtps2pd256(h);
#else
  return __builtin_convertvector(h, d4);
#endif
}
struct Wide {
  d4 lo{}, hi{};
  void add(vec<float> v) {  // exact
    lo += widen<0>(v);
    hi += widen<1>(v);
  }
  void add(vec<double> v) {
    lo += __builtin_shufflevector(v, v, 0, 1, 2, 3);
    hi += __builtin_shufflevector(v, v, 4, 5, 6, 7);
  }
  double sum() const {
    double s = 0;
    for (int l = 0; l < 4; ++l) s += lo[l];
    for (int l = 0; l < 4; ++l) s += hi[l];
    return s;
  }
};
// d[0..8) += v, in double.
inline void add_into(double* d, vec<float> v) {
  d4 lo, hi;
  std::memcpy(&lo, d, sizeof lo);
  std::memcpy(&hi, d + 4, sizeof hi);
  lo += widen<0>(v);
  hi += widen<1>(v);
  std::memcpy(d, &lo, sizeof lo);
  std::memcpy(d + 4, &hi, sizeof hi);
}
inline void add_into(double* d, vec<double> v) {
  vec<double> x;
  std::memcpy(&x, d, sizeof x);
  x += v;
  std::memcpy(d, &x, sizeof x);
}

template <class T>
inline vec<T> splat(T x) {
  return vec<T>{} + x;
}

// Lane-wise square root (exact, so the same bits under every instruction
// set): one instruction per register where the target has it.
template <class T>
inline vec<T> vsqrt(vec<T> x) {
  if constexpr (std::is_same_v<T, float>) {
#if defined(__AVX__)
    return __builtin_ia32_sqrtps256(x);
#elif defined(__SSE2__)
    typedef float f4 __attribute__((vector_size(16)));
    const f4 lo = __builtin_ia32_sqrtps(__builtin_shufflevector(x, x, 0, 1, 2, 3));
    const f4 hi = __builtin_ia32_sqrtps(__builtin_shufflevector(x, x, 4, 5, 6, 7));
    return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7);
#endif
  } else {
#if defined(__AVX__)
    const d4 lo = __builtin_ia32_sqrtpd256(__builtin_shufflevector(x, x, 0, 1, 2, 3));
    const d4 hi = __builtin_ia32_sqrtpd256(__builtin_shufflevector(x, x, 4, 5, 6, 7));
    return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7);
#endif
  }
  for (int l = 0; l < kLanes; ++l) x[l] = std::sqrt(x[l]);
  return x;
}

// The orders of the final arithmetic (Factored::Tail).
constexpr int kTorch = 0, kTransformers = 1, kBigVision = 2;

// ---------------------------------------------------------------- factored
// A unit is one (o, i, k): with L == 1 a contiguous row of m elements, else
// m lines of L contiguous elements.
template <class P, class S>
struct Factored {
  using T = typename Compute<P>::type;
  const Job& job;
  const P* grad() const { return static_cast<const P*>(job.grad); }
  P* param() const { return static_cast<P*>(job.param); }
  T sign() const { return job.maximize ? T(-1) : T(1); }

  void unit_index(i64 unit, i64& o, i64& i, i64& k) const {
    k = unit % job.K;
    i = (unit / job.K) % job.n;
    o = unit / (job.K * job.n);
  }

  // Rows of one matrix in a block [u0, u1) can be taken NR at a time from
  // NR segments of the block, q rows apart, rather than NR neighbours.
  // Returns q, or 0 where the block is not NR or more rows of one matrix
  // (K == L == 1). With NR == 1 (kRows2, kRows3) that is every row in turn.
  i64 spread(i64 u0, i64 u1, i64 nr) const {
    if (job.L != 1 || job.K != 1 || u1 - u0 < nr || u0 / job.n != (u1 - 1) / job.n) return 0;
    return (u1 - u0) / nr;
  }

  // Pass 1 (small groups, and single rows of lines with K > 1) over NR rows
  // of m elements, sr rows apart (row r at g + r * sr * m), that share their
  // columns: G^2 (+ add) summed along each row into rows[r * sr] and, over
  // the NR rows, added into the double column sums colp. One accumulator per
  // row keeps the adds off one dependency chain; runs of kRun join per-lane
  // double sums. The sign is left out: (-g)^2 == g^2.
  template <int NR, bool Eps>
  void rows1(const P* g, double* colp, T add, double* rows, i64 sr = 1) const {
    const i64 m = job.m, rs = sr * m;
    Wide lanes[NR];
    const vec<T> vadd = splat<T>(add);
    const i64 mv = m - m % kLanes;  // the vectorised part
    i64 j = 0;
    for (; j < mv; j += kRun) {
      const i64 end = j + kRun < mv ? j + kRun : mv;
      vec<T> acc[NR] = {};
      for (i64 c = j; c < end; c += kLanes) {
        vec<T> col{};
        for (int r = 0; r < NR; ++r) {
          const vec<T> gv = vload<T>(g + r * rs + c);
          vec<T> sq = gv * gv;
          if constexpr (Eps) sq += vadd;
          acc[r] += sq;
          col += sq;
        }
        add_into(colp + c, col);
      }
      for (int r = 0; r < NR; ++r) lanes[r].add(acc[r]);
    }
    double total[NR];
    for (int r = 0; r < NR; ++r) total[r] = lanes[r].sum();
    for (j = mv; j < m; ++j) {
      T col = 0;
      for (int r = 0; r < NR; ++r) {
        const T gv = load<T>(g, r * rs + j);
        const T sq = gv * gv + add;
        total[r] += sq;
        col += sq;
      }
      colp[j] += col;
    }
    for (int r = 0; r < NR; ++r) rows[r * sr] = total[r];
  }

  // Pass 1 over NR rows of a matrix sr rows apart, from `unit` (L == K == 1):
  // rows1 for the row and column sums, then, with wcolp, the rows again
  // (from cache) for the weighted column sums.
  template <int NR, bool Eps>
  void matrix_rows1(i64 unit, i64 sr, double* colp, double* wcolp, T add) const {
    const i64 at = (unit / job.n) * job.m;
    const P* g = grad() + unit * job.m;
    rows1<NR, Eps>(g, colp + at, add, job.row_sums + unit, sr);
    if (!wcolp) return;
    T inv[NR];
    for (int r = 0; r < NR; ++r) {
      inv[r] = T(1) / new_row_statistic(unit + r * sr, job.row_sums[unit + r * sr]);
    }
    weigh_rows<NR>(g, wcolp + at, sr, inv);
  }

  // Pass 1 over the rows [u0, u1) of matrices (L == K == 1): kRowsF1 rows
  // at a time, spread over the block (spread()), where the block is rows of
  // one matrix, else one at a time; with first_pass_param_sq, then the
  // block's param^2 in psq_block's order.
  template <bool Eps>
  void matrix_pass1(i64 block, i64 u0, i64 u1, double* colp, double* wcolp, T add) const {
    const i64 q = spread(u0, u1, kRowsF1);
    for (i64 r = 0; r < q; ++r) matrix_rows1<kRowsF1, Eps>(u0 + r, q, colp, wcolp, add);
    for (i64 unit = u0 + q * kRowsF1; unit < u1; ++unit) {
      matrix_rows1<1, Eps>(unit, 1, colp, wcolp, add);
    }
    if (job.first_pass_param_sq) job.param_sq[block] = psq_block(block);
  }

  // wcp (double, per column) += the sum over NR rows sr apart of
  // G^2 * inv[row], summed over the rows in the compute type first.
  template <int NR>
  void weigh_rows(const P* g, double* wcp, i64 sr, const T* inv) const {
    const i64 m = job.m, rs = sr * m;
    const i64 mv = m - m % kLanes;
    vec<T> vinv[NR];
    for (int r = 0; r < NR; ++r) vinv[r] = splat<T>(inv[r]);
    for (i64 c = 0; c < mv; c += kLanes) {
      vec<T> w{};
      for (int r = 0; r < NR; ++r) {
        const vec<T> gv = vload<T>(g + r * rs + c);
        w += gv * gv * vinv[r];
      }
      add_into(wcp + c, w);
    }
    for (i64 c = mv; c < m; ++c) {
      T w = 0;
      for (int r = 0; r < NR; ++r) {
        const T gv = load<T>(g, r * rs + c);
        w += gv * gv * inv[r];
      }
      wcp[c] += w;
    }
  }

  // The row statistic of `unit` after this step, from its sum of G^2
  // (+ eps1), as adafactor_fused.cpp computes and stores it (rounded to the
  // state dtype).
  T new_row_statistic(i64 unit, double sum) const {
    const S* rows = static_cast<const S*>(job.row_var);
    const T mean = static_cast<T>(sum) / static_cast<T>(job.m);
    const T b2 = static_cast<T>(job.beta2), ob2 = static_cast<T>(1.0 - job.beta2);
    S stored[1];
    store<T>(stored, 0, advanced_statistic<T>(load<T>(rows, unit), mean, job.stats_lerp,
                                              static_cast<T>(job.lerp_weight), b2, ob2));
    return load<T>(stored, 0);
  }

  // ws (first row of a run: written, later rows: added) += G^2 * inv along
  // one row.
  void weigh_row(const P* row, T* ws, bool first, T inv) const {
    const i64 m = job.m;
    const i64 mv = m - m % kLanes;
    const vec<T> vinv = splat<T>(inv);
    for (i64 c = 0; c < mv; c += kLanes) {
      const vec<T> gv = vload<T>(row + c);
      const vec<T> w = gv * gv * vinv;
      const vec<T> wv = first ? w : vload<T>(ws + c) + w;
      std::memcpy(ws + c, &wv, sizeof wv);
    }
    for (i64 c = mv; c < m; ++c) {
      const T gv = load<T>(row, c);
      const T w = gv * gv * inv;
      ws[c] = first ? w : ws[c] + w;
    }
  }

  // Pass 1: G^2 (+ eps1 for the transformers variant) summed along rows into
  // row_sums and along columns into this block's column sums (or, with
  // cols_owned, into the block's own range of one array).
  void pass1(i64 block) const {
    const i64 cols = job.O * job.K * job.m * job.L;
    const i64 units = job.O * job.n * job.K;
    const i64 u0 = block * job.block_size;
    const i64 u1 = u0 + job.block_size < units ? u0 + job.block_size : units;
    double* colp = job.col_partials;
    double* wcolp = job.weighted_cols;
    i64 c0 = 0, c1 = cols;  // the columns this block writes
    if (job.cols_owned) {
      const i64 per_o = job.n * job.K, col_per_o = job.K * job.m * job.L;
      c0 = (u0 / per_o) * col_per_o;
      c1 = ((u1 + per_o - 1) / per_o) * col_per_o;
    } else {
      colp += block * cols;
      if (wcolp) wcolp += block * cols;
    }
    for (i64 c = c0; c < c1; ++c) colp[c] = 0;
    if (wcolp) {
      for (i64 c = c0; c < c1; ++c) wcolp[c] = 0;
    }
    const T add = job.torch_variant ? T(0) : static_cast<T>(job.eps1);
    const P* g = grad();
    if (job.L == 1 && job.K == 1) {
      if (job.torch_variant) {
        matrix_pass1<false>(block, u0, u1, colp, wcolp, add);
      } else {
        matrix_pass1<true>(block, u0, u1, colp, wcolp, add);
      }
      return;
    }
    for (i64 unit = u0; unit < u1;) {
      i64 o, i, k;
      unit_index(unit, o, i, k);
      const i64 col_base = (o * job.K + k) * job.m * job.L;
      const i64 base = unit * job.m * job.L;
      if (job.L == 1) {
        rows1<1, true>(g + base, colp + col_base, add, job.row_sums + unit);
      } else {
        double* rows = job.row_sums + unit * job.L;
        for (i64 l = 0; l < job.L; ++l) rows[l] = 0;
        for (i64 j = 0; j < job.m; ++j) {
          const i64 line = base + j * job.L;
          double* cl = colp + col_base + j * job.L;
          for (i64 l = 0; l < job.L; ++l) {
            const T gv = load<T>(g, line + l);
            const T sq = gv * gv + add;
            rows[l] += sq;
            cl[l] += sq;
          }
        }
      }
      unit += 1;
    }
  }

  // U of one element from its gradient and the two factors.
  T update(T gv, T r, T c) const {
    if (job.clamp) return floored_update(gv, r * c, static_cast<T>(job.eps1));
    return r * gv * c;  // the order of the vector loops: (s*r)*g*c
  }

  // The units of a block, for passes 2 and 3: rows(base, R, C, nr, sr) for
  // nr rows of one matrix sr rows apart (NR spread over the block, see
  // spread(); else NR neighbours, or 1 where NR do not fit), row r at
  // base + r * sr * m with row factor R[r * sr] and column factors C, when
  // L == 1 and no V is clamped (`clamp` false); else line(at, len, R,
  // rstride, C) for each contiguous line, to be taken element by element.
  // With `clamp` false the walk is also the fixed order in which param^2 is
  // summed (psq_block), whatever this step's clamp.
  template <int NR, class Rows, class Line>
  void walk(i64 block, bool clamp, Rows&& rows, Line&& line) const {
    const T* R = static_cast<const T*>(job.row_factor);
    const T* C = static_cast<const T*>(job.col_factor);
    const i64 units = job.O * job.n * job.K;
    const i64 u0 = block * job.block_size;
    const i64 u1 = u0 + job.block_size < units ? u0 + job.block_size : units;
    const i64 q = clamp ? 0 : spread(u0, u1, NR);
    for (i64 r = 0; r < q; ++r) {  // NR rows q apart
      const i64 unit = u0 + r;
      rows(unit * job.m, R + unit, C + (unit / job.n) * job.m, NR, q);
    }
    for (i64 unit = u0 + q * NR; unit < u1;) {
      i64 o, i, k;
      unit_index(unit, o, i, k);
      const i64 col_base = (o * job.K + k) * job.m * job.L;
      const i64 base = unit * job.m * job.L;
      if (job.L == 1 && !clamp) {
        const i64 nr = job.K == 1 && unit + NR <= u1 && i + NR <= job.n ? NR : 1;
        rows(base, R + unit, C + col_base, nr, 1);
        unit += nr;
        continue;
      }
      const i64 lines = job.L == 1 ? 1 : job.m;
      const i64 len = job.L == 1 ? job.m : job.L;
      const T* Rl = job.L == 1 ? R + unit : R + unit * job.L;
      const i64 rstride = job.L == 1 ? 0 : 1;
      for (i64 j = 0; j < lines; ++j) line(base + j * len, len, Rl, rstride, C + col_base + j * len);
      unit += 1;
    }
  }


  // Pass 2: the sums of U^2 (WithU) and of param^2 (WithP; for RMS(param),
  // needed only from pass 3 on). Reading the parameter here rather than in
  // pass 1 lets pass 3 find the end of the block freshly read. NR rows of one
  // matrix at a time, each with its own row factor. The param^2 sums take
  // the same steps whether or not WithU: pass 3 repeats them on the rows it
  // writes (param_sq_next), as it writes them or by reading them back.
  template <int NR, bool WithU = true, bool WithP = true>
  void rows2(const P* g, const P* p, const T* R, const T* C, Wide& usq_lanes,
             Wide& psq_lanes, double* usq, double* psq, i64 sr = 1) const {
    const i64 rs = sr * job.m;
    const i64 m = job.m;
    const T s = sign();
    vec<T> vsr[NR];
    for (int r = 0; r < NR; ++r) vsr[r] = splat<T>(WithU ? s * R[r * sr] : T(0));
    const i64 mv = m - m % kLanes;  // the vectorised part
    for (i64 x = 0; x < mv; x += kRun) {
      const i64 end = x + kRun < mv ? x + kRun : mv;
      vec<T> a0{}, a1{}, q0{}, q1{};
      for (i64 c = x; c < end; c += kLanes) {
        vec<T> cv{};
        if constexpr (WithU) cv = vload<T>(C + c);
        for (int r = 0; r < NR; ++r) {
          if constexpr (WithU) {
            const vec<T> u = vsr[r] * vload<T>(g + r * rs + c) * cv;
            if (r % 2 == 0) {
              a0 += u * u;
            } else {
              a1 += u * u;
            }
          }
          if constexpr (WithP) {
            const vec<T> pv = vload<T>(p + r * rs + c);
            if (r % 2 == 0) {
              q0 += pv * pv;
            } else {
              q1 += pv * pv;
            }
          }
        }
      }
      if constexpr (WithU) usq_lanes.add(a0 + a1);
      if constexpr (WithP) psq_lanes.add(q0 + q1);
    }
    for (i64 x = mv; x < m; ++x) {
      for (int r = 0; r < NR; ++r) {
        if constexpr (WithU) {
          const T u = s * R[r * sr] * load<T>(g, r * rs + x) * C[x];
          usq[x % kLanes] += static_cast<double>(u) * u;
        }
        if constexpr (WithP) {
          const T pv = load<T>(p, r * rs + x);
          psq[x % kLanes] += static_cast<double>(pv) * pv;
        }
      }
    }
  }

  // param^2 of the rows rows(base, ...) of a walk gives, or of one line.
  void psq_rows(const P* p, i64 nr, i64 sr, Wide& psq_lanes, double* psq) const {
    if (nr == kRows2) {
      rows2<kRows2, false, true>(nullptr, p, nullptr, nullptr, psq_lanes, psq_lanes, nullptr, psq, sr);
    } else {
      rows2<1, false, true>(nullptr, p, nullptr, nullptr, psq_lanes, psq_lanes, nullptr, psq, sr);
    }
  }
  static void psq_line(const P* p, i64 len, double* psq) {
    for (i64 x = 0; x < len; ++x) {
      const T pv = load<T>(p, x);
      psq[x % kLanes] += static_cast<double>(pv) * pv;
    }
  }
  // The sum of param^2 over a block, in the one order of pass 2 without
  // clamping (so the same whether or not this step clamps): pass 3 repeats
  // it on the rows it writes, and pass 1 calls it where F2 may not run.
  double psq_block(i64 block) const {
    const P* p = param();
    Wide psq_lanes;
    double psq[kLanes] = {};
    walk<kRows2>(
        block, false,
        [&](i64 base, const T*, const T*, i64 nr, i64 sr) { psq_rows(p + base, nr, sr, psq_lanes, psq); },
        [&](i64 at, i64 len, const T*, i64, const T*) { psq_line(p + at, len, psq); });
    return lane_sum(psq) + psq_lanes.sum();
  }

  template <bool WithP>
  void pass2_of(i64 block) const {
    const P* g = grad();
    const P* p = param();
    const T s = sign();
    double usq[kLanes] = {}, psq[kLanes] = {};
    Wide usq_lanes, psq_lanes;
    walk<kRows2>(
        block, job.clamp,
        [&](i64 base, const T* R, const T* C, i64 nr, i64 sr) {
          if (nr == kRows2) {
            rows2<kRows2, true, WithP>(g + base, p + base, R, C, usq_lanes, psq_lanes, usq, psq, sr);
          } else {
            rows2<1, true, WithP>(g + base, p + base, R, C, usq_lanes, psq_lanes, usq, psq);
          }
        },
        [&](i64 at, i64 len, const T* R, i64 rstride, const T* C) {
          for (i64 x = 0; x < len; ++x) {
            const T u = update(s * load<T>(g, at + x), R[x * rstride], C[x]);
            usq[x % kLanes] += static_cast<double>(u) * u;
          }
          if constexpr (WithP) psq_line(p + at, len, psq);
        });
    job.update_sq[block] = lane_sum(usq) + usq_lanes.sum();
    if constexpr (WithP) job.param_sq[block] = lane_sum(psq) + psq_lanes.sum();
  }

  // Pass 2. Where V is clamped the walk takes lines, not the order of
  // psq_block: param^2 is then summed in a walk of its own.
  void pass2(i64 block) const {
    if (job.param_sq_known) {
      pass2_of<false>(block);
    } else if (job.clamp) {
      pass2_of<false>(block);
      job.param_sq[block] = psq_block(block);
    } else {
      pass2_of<true>(block);
    }
  }

  // The momentum of one element, updated and stored; returns it as stored
  // (the update is the momentum as stored). With bf16 momentum, as torch's
  // ops compute it: u rounded to bf16, then ATen's vectorised lerp in float
  // (one fused multiply-add), rounded back.
  inline T momentum(S* m, i64 idx, T u) const {
    if (job.momentum_bf16) {
      bf16* mb = reinterpret_cast<bf16*>(m);
      const float w = static_cast<float>(1.0 - job.beta1);
      const float old = to_float(mb[idx]);
      const float end = to_float(to_bf16(static_cast<float>(u)));
      const float mv = w < 0.5f ? __builtin_fmaf(w, end - old, old)
                                : __builtin_fmaf(w - 1.0f, end - old, end);
      mb[idx] = job.momentum_sr ? to_bf16_stochastic(mv, job.momentum_seed, idx) : to_bf16(mv);
      return static_cast<T>(to_float(mb[idx]));
    }
    const T b1 = static_cast<T>(job.beta1);
    store(m, idx, load<T>(m, idx) * b1 + u * (T(1) - b1));
    return load<T>(m, idx);
  }

  // Caution's first half: count whether the new momentum agrees in sign with
  // the gradient; the parameter is left for pass C2.
  inline void count_caution(T mv, i64 idx) const {
    tl_caution += mv * (sign() * load<T>(grad(), idx)) > T(0) ? 1 : 0;
  }

  // The final arithmetic of one element, in the order of the references.
  inline T apply(T pv, T u, S* m, i64 idx) const {
    const T p0 = pv;
    if (job.big_vision) {
      u = u / static_cast<T>(job.denom);
    } else if (job.torch_variant) {
      if (job.weight_decay) pv = pv * static_cast<T>(job.decay_mult);
      if (!job.momentum) return pv - static_cast<T>(job.alpha / job.denom) * u;
      u = u * static_cast<T>(job.alpha / job.denom);
    } else {
      u = u / static_cast<T>(job.denom) * static_cast<T>(job.alpha);
      if (job.weight_decay) pv = pv + pv * static_cast<T>(job.decay_coef);
    }
    if (job.momentum) {
      u = momentum(m, idx, u);
      if (job.caution) {
        count_caution(u, idx);
        return p0;
      }
    }
    if (job.big_vision) {
      u = u * static_cast<T>(job.alpha);
      if (job.weight_decay) pv = pv * static_cast<T>(job.decay_mult);
    }
    return pv - u;
  }

  inline void put(P* p, i64 idx, T v) const {
    if constexpr (sizeof(P) == 2) {
      p[idx] = job.stochastic_rounding
                   ? to_bf16_stochastic(static_cast<float>(v), job.seed, idx)
                   : to_bf16(static_cast<float>(v));
    } else {
      p[idx] = static_cast<P>(v);
    }
  }

  // The arithmetic after U, with the variant's branches resolved at compile
  // time so that the loops vectorise: eight lanes (never with stochastic
  // rounding, bf16 momentum or caution: see vectors()) or one element, in the
  // order of the references. Order: kTorch, kTransformers or kBigVision.
  template <int Order, bool Momentum, bool Decay>
  struct Tail {
    static constexpr bool Torch = Order == kTorch;
    static constexpr bool BigVision = Order == kBigVision;
    const Factored& f;
    T coef, alpha, denom, mult, dcoef, b1, ob1;
    vec<T> vcoef, valpha, vdenom, vmult, vdcoef, vb1, vob1;
    explicit Tail(const Factored& fa) : f(fa) {
      const Job& job = f.job;
      coef = static_cast<T>(job.alpha / job.denom);
      alpha = static_cast<T>(job.alpha);
      denom = static_cast<T>(job.denom);
      mult = static_cast<T>(job.decay_mult);
      dcoef = static_cast<T>(job.decay_coef);
      b1 = static_cast<T>(job.beta1);
      ob1 = T(1) - b1;
      vcoef = splat<T>(coef), valpha = splat<T>(alpha), vdenom = splat<T>(denom);
      vmult = splat<T>(mult), vdcoef = splat<T>(dcoef), vb1 = splat<T>(b1), vob1 = splat<T>(ob1);
    }
    // Returns the new parameter as computed (as stored where P is T).
    vec<T> lanes(P* p, S* m, i64 idx, vec<T> u) const {
      vec<T> pv = vload<T>(p + idx);
      if constexpr (BigVision) {
        u = u / vdenom;
      } else if constexpr (Torch) {
        if constexpr (Decay) pv = pv * vmult;
        u = u * vcoef;
      } else {
        u = u / vdenom * valpha;
        if constexpr (Decay) pv = pv + pv * vdcoef;
      }
      if constexpr (Momentum) {
        vstore<T>(m + idx, vload<T>(m + idx) * vb1 + u * vob1);
        u = vload<T>(m + idx);
      }
      if constexpr (BigVision) {
        u = u * valpha;
        if constexpr (Decay) pv = pv * vmult;
      }
      vstore<T>(p + idx, pv - u);
      return pv - u;
    }
    void one(P* p, S* m, i64 idx, T u) const {
      T pv = load<T>(p, idx);
      if constexpr (BigVision) {
        u = u / denom;
      } else if constexpr (Torch) {
        if constexpr (Decay) pv = pv * mult;
        u = u * coef;  // with momentum; without, p - coef*u below is the same
      } else {
        u = u / denom * alpha;
        if constexpr (Decay) pv = pv + pv * dcoef;
      }
      if constexpr (Momentum) {
        u = f.momentum(m, idx, u);
        if (f.job.caution) {
          f.count_caution(u, idx);
          return;
        }
      }
      if constexpr (BigVision) {
        u = u * alpha;
        if constexpr (Decay) pv = pv * mult;
      }
      f.put(p, idx, pv - u);
    }
  };

  // Whether the tails may take eight lanes at once.
  bool vectors() const { return !job.stochastic_rounding && !job.momentum_bf16 && !job.caution; }

  // NR rows of len elements sr rows apart (row r at base + r * sr * len, row
  // factor R[r * sr]) with no clamping: the common case.
  //
  // With psq_lanes (one row, P == T, vectors()), the new param^2 of the row
  // is summed as it is written, in the order of rows2's param^2 sums (runs
  // of kRun in the compute type, then per-lane doubles), so that the sum is
  // the one a re-read of the row would give.
  template <int NR, int Order, bool Momentum, bool Decay>
  void rows3(P* p, const P* g, S* m, i64 base, i64 len, const T* R, const T* C,
             i64 sr, Wide* psq_lanes, double* psq) const {
    const i64 rs = sr * len;
    const Tail<Order, Momentum, Decay> tail(*this);
    const T s = sign();
    i64 x = 0;
    if (vectors()) {
      vec<T> vsr[NR];
      for (int r = 0; r < NR; ++r) vsr[r] = splat<T>(s * R[r * sr]);
      if (NR == 1 && psq_lanes) {
        const i64 mv = len - len % kLanes;
        for (i64 run = 0; run < mv; run += kRun) {
          const i64 end = run + kRun < mv ? run + kRun : mv;
          vec<T> q{};
          for (x = run; x < end; x += kLanes) {
            const vec<T> pv =
                tail.lanes(p, m, base + x, vsr[0] * vload<T>(g + base + x) * vload<T>(C + x));
            q += pv * pv;
          }
          psq_lanes->add(q);
        }
        x = mv;
      } else {
        for (; x + kLanes <= len; x += kLanes) {
          const vec<T> cv = vload<T>(C + x);
          for (int r = 0; r < NR; ++r) {
            const i64 idx = base + r * rs + x;
            tail.lanes(p, m, idx, vsr[r] * vload<T>(g + idx) * cv);
          }
        }
      }
    }
    for (int r = 0; r < NR; ++r) {
      for (i64 y = x; y < len; ++y) {
        const i64 idx = base + r * rs + y;
        tail.one(p, m, idx, s * R[r * sr] * load<T>(g, idx) * C[y]);
        if (NR == 1 && psq_lanes) {
          const T pv = load<T>(p, idx);
          psq[y % kLanes] += static_cast<double>(pv) * pv;
        }
      }
    }
  }

  // len contiguous elements with a row and a column factor each (re holds
  // the sign times the row factor): small groups, no clamping.
  template <int Order, bool Momentum, bool Decay>
  void span3(P* p, const P* g, S* m, i64 base, i64 len, const T* re, const T* ce) const {
    const Tail<Order, Momentum, Decay> tail(*this);
    i64 x = 0;
    if (vectors()) {
      for (; x + kLanes <= len; x += kLanes) {
        tail.lanes(p, m, base + x, vload<T>(re + x) * vload<T>(g + base + x) * vload<T>(ce + x));
      }
    }
    for (; x < len; ++x) tail.one(p, m, base + x, re[x] * load<T>(g, base + x) * ce[x]);
  }

  using SpanFn = void (Factored::*)(P*, const P*, S*, i64, i64, const T*, const T*) const;
  int order() const { return job.big_vision ? kBigVision : job.torch_variant ? kTorch : kTransformers; }

  template <int Order>
  SpanFn pick_span3_of() const {
    if (job.momentum) return job.weight_decay ? &Factored::span3<Order, true, true> : &Factored::span3<Order, true, false>;
    return job.weight_decay ? &Factored::span3<Order, false, true> : &Factored::span3<Order, false, false>;
  }
  SpanFn pick_span3() const {
    switch (order()) {
      case kTorch: return pick_span3_of<kTorch>();
      case kTransformers: return pick_span3_of<kTransformers>();
      default: return pick_span3_of<kBigVision>();
    }
  }

  using RowsFn = void (Factored::*)(P*, const P*, S*, i64, i64, const T*, const T*, i64, Wide*,
                                    double*) const;
  template <int NR, int Order>
  RowsFn pick_rows3_of() const {
    if (job.momentum) return job.weight_decay ? &Factored::rows3<NR, Order, true, true> : &Factored::rows3<NR, Order, true, false>;
    return job.weight_decay ? &Factored::rows3<NR, Order, false, true> : &Factored::rows3<NR, Order, false, false>;
  }
  template <int NR>
  RowsFn pick_rows3() const {
    switch (order()) {
      case kTorch: return pick_rows3_of<NR, kTorch>();
      case kTransformers: return pick_rows3_of<NR, kTransformers>();
      default: return pick_rows3_of<NR, kBigVision>();
    }
  }

  // Pass 3; with param_sq_next, the sum of the new param^2 in psq_block's
  // order: rows and lines as they are written (from cache), or, where this
  // step clamps, in a walk of its own.
  void pass3(i64 block) const {
    static_assert(kRows2 == kRows3, "pass 3 sums param^2 in the rows of pass 2");
    const P* g = grad();
    P* p = param();
    S* m = static_cast<S*>(job.exp_avg);
    const T s = sign();
    const RowsFn one = pick_rows3<1>(), several = pick_rows3<kRows3>();
    const bool sums = job.param_sq_next && !job.clamp;
    // Summed as written where the stored value is the computed one.
    const bool as_written = sums && vectors() && std::is_same_v<P, T>;
    Wide psq_lanes;
    double psq[kLanes] = {};
    walk<kRows3>(
        block, job.clamp,
        [&](i64 base, const T* R, const T* C, i64 nr, i64 sr) {
          if (as_written && nr == 1) {
            (this->*one)(p, g, m, base, job.m, R, C, sr, &psq_lanes, psq);
            return;
          }
          (this->*(nr == kRows3 ? several : one))(p, g, m, base, job.m, R, C, sr, nullptr, nullptr);
          if (sums) psq_rows(p + base, nr, sr, psq_lanes, psq);
        },
        [&](i64 at, i64 len, const T* R, i64 rstride, const T* C) {
          for (i64 x = 0; x < len; ++x) {
            const T u = update(s * load<T>(g, at + x), R[x * rstride], C[x]);
            put(p, at + x, apply(load<T>(p, at + x), u, m, at + x));
          }
          if (sums) psq_line(p + at, len, psq);
        });
    if (sums) {
      job.param_sq_next[block] = lane_sum(psq) + psq_lanes.sum();
    } else if (job.param_sq_next) {
      job.param_sq_next[block] = psq_block(block);
    }
  }
};

// ---------------------------------------------------------------- groups
// Small matrices, one per leading index o (conv weights [out, in, kh, kw]
// factored over kh x kw, or one small 2-D parameter): a block owns whole
// groups, so it can finish their statistics itself. Pass G1 reads the
// gradient once for the row and column sums, updates the state, and reads
// it again (from cache) for the sums of U^2 (and, unless known, the
// parameter for param^2); pass G2 rebuilds the factors from the state, by
// the same code, and applies the update. Groups are taken in batches of
// kBatchElems elements at most. 3 x 3 groups (by far the most common) are
// taken eight at a time, one group a lane for their statistics (see load9,
// load_stats): the per-row and per-column work is then plain vector
// arithmetic, and G2 spreads the factors back into memory order (see
// spread_factors) rather than transposing the update. Others, and the few
// 3 x 3 groups left over at the end of a block, go through per-batch arrays.
// NN, MM: the group's shape when known at compile time, else 0.
template <class P, class S, int NN = 0, int MM = 0>
struct Groups {
  using T = typename Compute<P>::type;
  using V = vec<T>;
  static constexpr bool kLaneGroups = NN == 3 && MM == 3;
  const Job& job;
  void* scratch;  // kGroupScratchBytes, this thread's
  i64 rows() const { return NN ? NN : job.n; }
  i64 cols() const { return MM ? MM : job.m; }
  // Rows long enough for the vector loops of large matrices, which take a
  // row factor and the column factors as they are; shorter rows get the
  // factors spread per element (re, ce) for one vector loop over the batch.
  bool wide() const { return MM == 0 && cols() >= kLanes; }

  // Per batch, kBatchElems entries each (rows and columns never outnumber
  // the elements).
  struct Scratch {
    double rs[kBatchElems], cs[kBatchElems];  // gradient sums
    T ratio[kBatchElems], col[kBatchElems];   // row / mean_rows(row), col
    T rf[kBatchElems], cf[kBatchElems];       // their rsqrt
    T re[kBatchElems], ce[kBatchElems];       // per element: s * rf, cf
    bool clamp[kBatchElems];                  // per group
  };
  static_assert(sizeof(Scratch) <= kGroupScratchBytes, "kGroupScratchBytes too small");

  // Groups per batch: as many as fit, a multiple of eight for 3 x 3.
  i64 batch() const {
    if constexpr (kLaneGroups) return kBatchElems / 9 / kLanes * kLanes;
    const i64 b = kBatchElems / (rows() * cols());
    return b < 1 ? 1 : b;
  }

  void range(i64 block, i64& o0, i64& o1) const {
    o0 = block * job.block_size;
    o1 = o0 + job.block_size < job.O ? o0 + job.block_size : job.O;
  }

  // param^2 over a batch's elements: the one order of G1 and G2, in runs
  // of kPsqRun elements from the batch's start. For 3 x 3 groups a run is
  // the 72 elements of eight groups, so that G2 can sum them as it writes
  // them (lanes2) instead of reading them back.
  static constexpr i64 kPsqRun = kLaneGroups ? 9 * kLanes : kRun;
  static void psq_range(const P* p, i64 len, Wide& lanes, double* tail) {
    const i64 lv = len - len % kLanes;
    for (i64 e = 0; e < lv; e += kPsqRun) {
      const i64 end = e + kPsqRun < lv ? e + kPsqRun : lv;
      V q{};
      for (i64 c = e; c < end; c += kLanes) {
        const V pv = vload<T>(p + c);
        q += pv * pv;
      }
      lanes.add(q);
    }
    for (i64 e = lv; e < len; ++e) {
      const T pv = load<T>(p, e);
      tail[e % kLanes] += static_cast<double>(pv) * pv;
    }
  }

  // ------------------------------------------------ eight 3 x 3 groups
  // 72 consecutive elements, eight groups of nine, held as nine vectors
  // E[e], e = 3 i + j, whose lane k is element (i, j) of group k (load9);
  // the groups' three rows (or columns) of statistics, 24 values, as three
  // vectors x[i] whose lane k is row i of group k (load_stats: a 3-way
  // deinterleave). Pure data movement: every instruction set gives the same
  // numbers.
  // A 3-way (de)interleave is two blends and one permute per vector (lane k
  // of the blend takes source k % 3, shifted per output, so every lane
  // stays in place), the least the vector units do for it.
  [[gnu::always_inline]] static void deinterleave3(V a, V b, V c, V& p0, V& p1, V& p2) {
    // a, b, c hold x0..x23; p_r = x_r, x_{r+3}, ..., x_{r+21}.
    const V m0 = __builtin_shufflevector(__builtin_shufflevector(a, b, 0, 9, 2, 3, 12, 5, 6, 15), c,
                                         0, 1, 10, 3, 4, 13, 6, 7);  // x0 x9 x18 x3 x12 x21 x6 x15
    const V m1 = __builtin_shufflevector(__builtin_shufflevector(a, b, 0, 1, 10, 3, 4, 13, 6, 7), c,
                                         8, 1, 2, 11, 4, 5, 14, 7);  // x16 x1 x10 x19 x4 x13 x22 x7
    const V m2 = __builtin_shufflevector(__builtin_shufflevector(a, b, 8, 1, 2, 11, 4, 5, 14, 7), c,
                                         0, 9, 2, 3, 12, 5, 6, 15);  // x8 x17 x2 x11 x20 x5 x14 x23
    p0 = __builtin_shufflevector(m0, m0, 0, 3, 6, 1, 4, 7, 2, 5);
    p1 = __builtin_shufflevector(m1, m1, 1, 4, 7, 2, 5, 0, 3, 6);
    p2 = __builtin_shufflevector(m2, m2, 2, 5, 0, 3, 6, 1, 4, 7);
  }
  [[gnu::always_inline]] static void interleave3(V p0, V p1, V p2, V& a, V& b, V& c) {
    // The inverse: permute back into the blends' lanes, then blend.
    const V m0 = __builtin_shufflevector(p0, p0, 0, 3, 6, 1, 4, 7, 2, 5);
    const V m1 = __builtin_shufflevector(p1, p1, 5, 0, 3, 6, 1, 4, 7, 2);
    const V m2 = __builtin_shufflevector(p2, p2, 2, 5, 0, 3, 6, 1, 4, 7);
    a = __builtin_shufflevector(__builtin_shufflevector(m0, m1, 0, 9, 2, 3, 12, 5, 6, 15), m2,
                                0, 1, 10, 3, 4, 13, 6, 7);
    b = __builtin_shufflevector(__builtin_shufflevector(m0, m1, 0, 1, 10, 3, 4, 13, 6, 7), m2,
                                8, 1, 2, 11, 4, 5, 14, 7);
    c = __builtin_shufflevector(__builtin_shufflevector(m0, m1, 8, 1, 2, 11, 4, 5, 14, 7), m2,
                                0, 9, 2, 3, 12, 5, 6, 15);
  }
  // Memory order to E: the groups' first eight elements, read as eight
  // overlapping rows (group k from element 9 k), make an 8 x 8 transpose;
  // E[8] is lane k of the aligned vector k + 1 (9 k + 8 = 8 (k + 1) + k),
  // by blends. Fewer shuffles than transposing the aligned vectors by 3-way
  // steps, for a few more loads from cache.
  template <int K, std::size_t... L>
  [[gnu::always_inline]] static V take_lane(V a, V b, std::index_sequence<L...>) {
    return __builtin_shufflevector(a, b, (int(L) == K ? kLanes + int(L) : int(L))...);
  }
  template <class X>
  [[gnu::always_inline]] static void load9(const X* p, V* E) {
    V r[8];
    for (int k = 0; k < 8; ++k) r[k] = vload<T>(p + 9 * k);
    V t[8], u[8];
    for (int k = 0; k < 8; k += 2) {
      t[k] = __builtin_shufflevector(r[k], r[k + 1], 0, 8, 1, 9, 4, 12, 5, 13);
      t[k + 1] = __builtin_shufflevector(r[k], r[k + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    for (int k = 0; k < 8; k += 4) {
      u[k] = __builtin_shufflevector(t[k], t[k + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[k + 1] = __builtin_shufflevector(t[k], t[k + 2], 2, 3, 10, 11, 6, 7, 14, 15);
      u[k + 2] = __builtin_shufflevector(t[k + 1], t[k + 3], 0, 1, 8, 9, 4, 5, 12, 13);
      u[k + 3] = __builtin_shufflevector(t[k + 1], t[k + 3], 2, 3, 10, 11, 6, 7, 14, 15);
    }
    for (int e = 0; e < 4; ++e) {
      E[e] = __builtin_shufflevector(u[e], u[e + 4], 0, 1, 2, 3, 8, 9, 10, 11);
      E[e + 4] = __builtin_shufflevector(u[e], u[e + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    }
    constexpr auto all = std::make_index_sequence<kLanes>{};
    V last = vload<T>(p + kLanes);
    last = take_lane<1>(last, vload<T>(p + 2 * kLanes), all);
    last = take_lane<2>(last, vload<T>(p + 3 * kLanes), all);
    last = take_lane<3>(last, vload<T>(p + 4 * kLanes), all);
    last = take_lane<4>(last, vload<T>(p + 5 * kLanes), all);
    last = take_lane<5>(last, vload<T>(p + 6 * kLanes), all);
    last = take_lane<6>(last, vload<T>(p + 7 * kLanes), all);
    E[8] = take_lane<7>(last, vload<T>(p + 8 * kLanes), all);
  }
  // Values per row (or per column) of eight groups, in the order of the
  // statistics (x[3 k + i], three vectors), spread over the 72 elements in
  // memory order: vector t of spread<t, true> holds x[e / 3] at element e
  // (9 k + 3 i + j); of spread<t, false>, x[3 (e / 9) + e % 3]. One permute
  // a vector, or two and a blend where it takes two of x.
  static constexpr int spread_index(bool by_row, int e) { return by_row ? e / 3 : 3 * (e / 9) + e % 3; }
  template <int Vt, bool ByRow, std::size_t... L>
  [[gnu::always_inline]] static V spread_of(const V* x, std::index_sequence<L...>) {
    constexpr int lo = spread_index(ByRow, kLanes * Vt) / kLanes;
    constexpr int hi = spread_index(ByRow, kLanes * Vt + kLanes - 1) / kLanes;
    return __builtin_shufflevector(x[lo], x[hi], (spread_index(ByRow, kLanes * Vt + int(L)) - kLanes * lo)...);
  }
  template <int Vt, bool ByRow>
  [[gnu::always_inline]] static V spread(const V* x) {
    return spread_of<Vt, ByRow>(x, std::make_index_sequence<kLanes>{});
  }
  // The factors in memory order: f[t] = a (by row) * b (by column).
  template <std::size_t... Vt>
  [[gnu::always_inline]] static void spread_factors(const V* a, const V* b, V* f, std::index_sequence<Vt...>) {
    ((f[Vt] = spread<int(Vt), true>(a) * spread<int(Vt), false>(b)), ...);
  }
  // The three rows (or columns) of eight groups' statistics: 24 values.
  [[gnu::always_inline]] static void load_stats(const S* s, V* out) {
    deinterleave3(vload<T>(s), vload<T>(s + kLanes), vload<T>(s + 2 * kLanes), out[0], out[1], out[2]);
  }
  [[gnu::always_inline]] static void store_stats(S* s, const V* in) {
    V a, b, c;
    interleave3(in[0], in[1], in[2], a, b, c);
    vstore<T>(s, a);
    vstore<T>(s + kLanes, b);
    vstore<T>(s + 2 * kLanes, c);
  }
  static V vlerp(V self, V end, T weight) {
    return weight < T(0.5) ? self + splat<T>(weight) * (end - self)
                           : end - (end - self) * splat<T>(T(1) - weight);
  }

  // Whether every lane of a comparison holds: one test, not eight (under
  // AVX, of the lanes' sign bits).
  template <class M>
  static bool all_lanes(M m) {
#if defined(__AVX__)
    if constexpr (sizeof(M) == 8 * sizeof(float)) {
      vec<float> f;
      std::memcpy(&f, &m, sizeof f);
      return __builtin_ia32_movmskps256(f) == 0xFF;
    }
#endif
    std::uint64_t w[sizeof(M) / 8];
    std::memcpy(w, &m, sizeof w);
    std::uint64_t all = ~std::uint64_t{0};
    for (const std::uint64_t x : w) all &= x;
    return all == ~std::uint64_t{0};
  }
  // The mean of the three rows' statistics (floored at eps1 for torch): a
  // product with 1/3, not a division, which costs a few vector divides less
  // per 72 elements at an ulp of difference.
  V row_mean(const V* R) const {
    V mean = ((R[0] + R[1]) + R[2]) * splat<T>(T(1) / T(3));
    const T eps1 = static_cast<T>(job.eps1);
    if (job.torch_variant) mean = mean < splat<T>(eps1) ? splat<T>(eps1) : mean;
    return mean;
  }
  // The lanes (groups) where torch's floor V >= eps1^2 cannot bite, by the
  // smallest V of the group, min_i(R_i) / mean * min_j(C_j) (rounding is
  // monotonic), written without the division; near the boundary either side
  // gives the same U to an ulp. The one test of G1 and G2.
  auto unfloored(const V* R, const V* C, const V& mean) const {
    V min_row = R[0], min_col = C[0];
    for (int i = 1; i < 3; ++i) min_row = R[i] < min_row ? R[i] : min_row;
    for (int j = 1; j < 3; ++j) min_col = C[j] < min_col ? C[j] : min_col;
    const T eps1 = static_cast<T>(job.eps1);
    return min_row * min_col >= splat<T>(eps1 * eps1) * mean;
  }

  // A cheaper test that unfloored() holds in every lane: the smallest
  // column of all eight groups stands for each group's (no larger, and
  // rounding is monotonic), and the columns hold no NaN, which unfloored()'s
  // minimum can keep where this one drops it: their sum is a number (it is
  // NaN for any NaN, and for +inf beside -inf, which only sends a batch to
  // the exact test). c: the columns as stored.
  [[gnu::always_inline]] bool surely_unfloored(const V* R, const V* c, const V& mean) const {
    V m = c[1] < c[0] ? c[1] : c[0];
    m = c[2] < m ? c[2] : m;
    m = __builtin_shufflevector(m, m, 4, 5, 6, 7, 0, 1, 2, 3) < m ? __builtin_shufflevector(m, m, 4, 5, 6, 7, 0, 1, 2, 3) : m;
    m = __builtin_shufflevector(m, m, 2, 3, 0, 1, 6, 7, 4, 5) < m ? __builtin_shufflevector(m, m, 2, 3, 0, 1, 6, 7, 4, 5) : m;
    m = __builtin_shufflevector(m, m, 1, 0, 3, 2, 5, 4, 7, 6) < m ? __builtin_shufflevector(m, m, 1, 0, 3, 2, 5, 4, 7, 6) : m;
    const V sum = (c[0] + c[1]) + c[2];
    const V C[3] = {m, m, m};
    return all_lanes((sum == sum) & unfloored(R, C, mean));
  }
  // U of element e of the group in lane l where the floor can bite: torch's
  // V = ratio * col, floored, element by element (as update()).
  T floored(T gv, const V* R, const V* C, const V& mean, int e, int l) const {
    const T s = job.maximize ? T(-1) : T(1);
    const T ratio = R[e / 3][l] / mean[l];
    return floored_update(s * gv, ratio * C[e % 3][l], static_cast<T>(job.eps1));
  }

  // Batches of eight groups that each pass takes a step ahead (see lanes2).
  static constexpr i64 kAhead = 4;
  // G1 for groups o .. o + 7, in two steps, as pass 2 (lanes2): stats1
  // reads the gradient and updates the statistics, keeping the squares of
  // the gradient and the new statistics (by lanes) in w; usq1 sums U^2 from
  // them. The gradient itself is read again from memory in the rare groups
  // where the floor bites.
  struct Lanes1 {
    V g2[9], R[3], C[3];
  };
  [[gnu::always_inline]] void stats1(i64 o, Lanes1& w) const {
    const P* grad = static_cast<const P*>(job.grad) + o * 9;
    V* g2 = w.g2;
    load9(grad, g2);
    for (int e = 0; e < 9; ++e) g2[e] = g2[e] * g2[e];
    // The statistics sum g^2 (torch) or g^2 + eps1 (the others).
    const V add = splat<T>(job.torch_variant ? T(0) : static_cast<T>(job.eps1));
    S* row = static_cast<S*>(job.row_var) + o * 3;
    S* col = static_cast<S*>(job.col_var) + o * 3;
    V R[3], C[3];
    load_stats(row, R);
    load_stats(col, C);
    const V third = splat<T>(T(1) / T(3));
    V rs[3], cs[3];
    if (job.torch_variant) {  // x + 0 == x for the squares: the adds go
      for (int i = 0; i < 3; ++i) rs[i] = ((g2[3 * i] + g2[3 * i + 1]) + g2[3 * i + 2]) * third;
      for (int j = 0; j < 3; ++j) cs[j] = ((g2[j] + g2[3 + j]) + g2[6 + j]) * third;
    } else {
      for (int i = 0; i < 3; ++i) {
        rs[i] = (((g2[3 * i] + add) + (g2[3 * i + 1] + add)) + (g2[3 * i + 2] + add)) * third;
      }
      for (int j = 0; j < 3; ++j) cs[j] = (((g2[j] + add) + (g2[3 + j] + add)) + (g2[6 + j] + add)) * third;
    }
    if (job.stats_lerp) {
      const T wt = static_cast<T>(job.lerp_weight);
      for (int i = 0; i < 3; ++i) R[i] = vlerp(R[i], rs[i], wt);
      for (int j = 0; j < 3; ++j) C[j] = vlerp(C[j], cs[j], wt);
    } else {
      const V b2 = splat<T>(static_cast<T>(job.beta2));
      const V ob2 = splat<T>(static_cast<T>(1.0 - job.beta2));
      for (int i = 0; i < 3; ++i) R[i] = R[i] * b2 + rs[i] * ob2;
      for (int j = 0; j < 3; ++j) C[j] = C[j] * b2 + cs[j] * ob2;
    }
    store_stats(row, R);
    store_stats(col, C);
    if constexpr (!std::is_same_v<S, T>) {  // bf16 state: U from the values as stored
      load_stats(row, R);
      load_stats(col, C);
    }
    for (int i = 0; i < 3; ++i) w.R[i] = R[i], w.C[i] = C[i];
  }
  [[gnu::always_inline]] void usq1(i64 o, const Lanes1& w, Wide& usq_lanes) const {
    const V* g2 = w.g2;
    const V* R = w.R;
    const V* C = w.C;
    // sum U^2 = sum_ij F_ij^2 G_ij^2 with F_ij^2 = (mean / R_i) / C_j, taken
    // before the square roots that pass G2 rounds F through: no square
    // roots here, and the same sum to a few ulps.
    const V mean = row_mean(R);
    const V one = splat<T>(T(1));
    const V ic[3] = {one / C[0], one / C[1], one / C[2]};
    V a{};
    for (int i = 0; i < 3; ++i) {
      const V row_sum = (g2[3 * i] * ic[0] + g2[3 * i + 1] * ic[1]) + g2[3 * i + 2] * ic[2];
      a += (mean / R[i]) * row_sum;
    }
    if (job.torch_variant) {
      // Groups where torch's floor can bite: U element by element.
      const auto fine = unfloored(R, C, mean);
      const P* grad = static_cast<const P*>(job.grad) + o * 9;
      for (int l = 0; !all_lanes(fine) && l < kLanes; ++l) {
        if (fine[l]) continue;
        T sum = 0;
        for (int e = 0; e < 9; ++e) {
          const T u = floored(load<T>(grad, 9 * l + e), R, C, mean, e, l);
          sum += u * u;
        }
        a[l] = sum;
      }
    }
    usq_lanes.add(a);
  }
  void lanes1(i64 o, i64 batches, Wide& usq_lanes) const {
    Lanes1 w[kAhead];
    for (i64 b = 0; b < batches; b += kAhead) {
      const i64 nb = batches - b < kAhead ? batches - b : kAhead;
      for (i64 c = 0; c < nb; ++c) stats1(o + (b + c) * kLanes, w[c]);
      for (i64 c = 0; c < nb; ++c) usq1(o + (b + c) * kLanes, w[c], usq_lanes);
    }
  }

  // G2 for groups o .. o + 7, in memory order, in two steps. factors2 forms
  // the factors s * sqrt(mean / R_i) and 1 / sqrt(C_j) in the order of the
  // statistics (mean: by lanes, then spread by row) and spreads them over
  // the elements (f, nine vectors); it returns the lanes (groups) where
  // torch's floor V >= eps1^2 can bite, as bits. apply2 meets them with the
  // gradient and the parameter, U element by element where the floor bites.
  // pass2 forms the factors of several batches before it applies them:
  // each is a long chain of dependent steps (divisions, square roots), and
  // the batches' chains then overlap.
  // The statistics by lanes, for the groups where the floor bites.
  [[gnu::always_inline]] void stats2(i64 o, V* R, V* C, V& mean) const {
    load_stats(static_cast<const S*>(job.row_var) + o * 3, R);
    load_stats(static_cast<const S*>(job.col_var) + o * 3, C);
    mean = row_mean(R);
  }
  [[gnu::always_inline]] unsigned factors2(i64 o, V* f) const {
    const S* rowp = static_cast<const S*>(job.row_var) + o * 3;
    const S* colp = static_cast<const S*>(job.col_var) + o * 3;
    V r[3], c[3], R[3], C[3], mean;
    for (int v = 0; v < 3; ++v) {
      r[v] = vload<T>(rowp + v * kLanes);
      c[v] = vload<T>(colp + v * kLanes);
    }
    deinterleave3(r[0], r[1], r[2], R[0], R[1], R[2]);
    mean = row_mean(R);
    const V sign = splat<T>(job.maximize ? T(-1) : T(1)), one = splat<T>(T(1));
    const V a[3] = {sign * vsqrt<T>(spread<0, true>(&mean) / r[0]), sign * vsqrt<T>(spread<1, true>(&mean) / r[1]),
                    sign * vsqrt<T>(spread<2, true>(&mean) / r[2])};
    const V b[3] = {one / vsqrt<T>(c[0]), one / vsqrt<T>(c[1]), one / vsqrt<T>(c[2])};
    spread_factors(a, b, f, std::make_index_sequence<9>{});
    if (!job.torch_variant || surely_unfloored(R, c, mean)) return 0;
    deinterleave3(c[0], c[1], c[2], C[0], C[1], C[2]);
    const auto fine = unfloored(R, C, mean);
    unsigned clamped = 0;
    for (int l = 0; l < kLanes; ++l) clamped |= fine[l] ? 0u : 1u << l;
    return clamped;
  }
  template <class Tail>
  [[gnu::always_inline]] void apply2(i64 o, const V* f, unsigned clamped, const Tail& tail, bool vectors,
                                     Wide* psq) const {
    const i64 base = o * 9;
    const P* g = static_cast<const P*>(job.grad) + base;
    P* p = static_cast<P*>(job.param);
    S* m = static_cast<S*>(job.exp_avg);
    if (vectors && !clamped) {
      V q{};  // psq_range's run over these 72 elements, as written
      for (int t = 0; t < 9; ++t) {
        const V written = tail.lanes(p, m, base + t * kLanes, f[t] * vload<T>(g + t * kLanes));
        if (psq) q += written * written;
      }
      if (psq) psq->add(q);
      return;
    }
    V u[9];
    for (int t = 0; t < 9; ++t) u[t] = f[t] * vload<T>(g + t * kLanes);
    if (clamped) {
      V R[3], C[3], mean;
      stats2(o, R, C, mean);
      for (int l = 0; l < kLanes; ++l) {
        if (!(clamped >> l & 1u)) continue;
        for (int e = 0; e < 9; ++e) {
          const int x = 9 * l + e;
          u[x / kLanes][x % kLanes] = floored(load<T>(g, x), R, C, mean, e, l);
        }
      }
    }
    if (vectors) {
      V q{};
      for (int t = 0; t < 9; ++t) {
        const V written = tail.lanes(p, m, base + t * kLanes, u[t]);
        if (psq) q += written * written;
      }
      if (psq) psq->add(q);
    } else {
      for (int t = 0; t < 9; ++t) {
        for (int l = 0; l < kLanes; ++l) tail.one(p, m, base + t * kLanes + l, u[t][l]);
      }
    }
  }
  template <class Tail>
  void lanes2(i64 o, i64 batches, const Tail& tail, bool vectors, Wide* psq) const {
    V f[kAhead][9];
    unsigned clamped[kAhead];
    for (i64 b = 0; b < batches; b += kAhead) {
      const i64 nb = batches - b < kAhead ? batches - b : kAhead;
      for (i64 c = 0; c < nb; ++c) clamped[c] = factors2(o + (b + c) * kLanes, f[c]);
      for (i64 c = 0; c < nb; ++c) apply2(o + (b + c) * kLanes, f[c], clamped[c], tail, vectors, psq);
    }
  }

  // ------------------------------------------------ any groups, by arrays
  // The running statistics of groups [o0, o0 + nb) from their gradient sums.
  void advance(i64 o0, i64 nb, const Scratch& w) const {
    S* row = static_cast<S*>(job.row_var) + o0 * rows();
    S* col = static_cast<S*>(job.col_var) + o0 * cols();
    const T wt = static_cast<T>(job.lerp_weight);
    const T b2 = static_cast<T>(job.beta2), ob2 = static_cast<T>(1.0 - job.beta2);
    const T m = static_cast<T>(cols()), n = static_cast<T>(rows());
    if (job.stats_lerp) {
      for (i64 k = 0; k < nb * rows(); ++k) {
        store(row, k, lerp(load<T>(row, k), static_cast<T>(w.rs[k]) / m, wt));
      }
      for (i64 k = 0; k < nb * cols(); ++k) {
        store(col, k, lerp(load<T>(col, k), static_cast<T>(w.cs[k]) / n, wt));
      }
    } else {
      for (i64 k = 0; k < nb * rows(); ++k) {
        store(row, k, load<T>(row, k) * b2 + static_cast<T>(w.rs[k]) / m * ob2);
      }
      for (i64 k = 0; k < nb * cols(); ++k) {
        store(col, k, load<T>(col, k) * b2 + static_cast<T>(w.cs[k]) / n * ob2);
      }
    }
  }

  // From the state, as prepare_factors does for large matrices, but per
  // group: ratios, columns, their rsqrt, and whether torch's floor
  // V >= eps1^2 can bite in the group. Then re and ce per element. Returns
  // whether any group of the batch clamps.
  bool factors(i64 o0, i64 nb, Scratch& w) const {
    const S* row = static_cast<const S*>(job.row_var) + o0 * rows();
    const S* col = static_cast<const S*>(job.col_var) + o0 * cols();
    const i64 n = rows(), m = cols();
    const T eps1 = static_cast<T>(job.eps1);
    // The mean of each group's rows, spread over its rows (in rf, which is
    // free until the rsqrt below), so that the divisions run as one loop.
    for (i64 gi = 0; gi < nb; ++gi) {
      double sum = 0;
      for (i64 i = 0; i < n; ++i) sum += static_cast<double>(load<T>(row, gi * n + i));
      T mean = static_cast<T>(sum) / static_cast<T>(n);
      if (job.torch_variant && mean < eps1) mean = eps1;
      for (i64 i = 0; i < n; ++i) w.rf[gi * n + i] = mean;
    }
    for (i64 k = 0; k < nb * n; ++k) w.ratio[k] = load<T>(row, k) / w.rf[k];
    for (i64 k = 0; k < nb * m; ++k) w.col[k] = load<T>(col, k);
    bool any = false;
    for (i64 gi = 0; gi < nb; ++gi) {
      w.clamp[gi] = false;
      if (!job.torch_variant) continue;
      T min_ratio = w.ratio[gi * n], min_col = w.col[gi * m];
      for (i64 i = 1; i < n; ++i) min_ratio = w.ratio[gi * n + i] < min_ratio ? w.ratio[gi * n + i] : min_ratio;
      for (i64 j = 1; j < m; ++j) min_col = w.col[gi * m + j] < min_col ? w.col[gi * m + j] : min_col;
      w.clamp[gi] = !(min_ratio * min_col >= eps1 * eps1);
      any = any || w.clamp[gi];
    }
    // Whole arrays: the compiler vectorises these.
    for (i64 k = 0; k < nb * n; ++k) w.rf[k] = T(1) / std::sqrt(w.ratio[k]);
    for (i64 k = 0; k < nb * m; ++k) w.cf[k] = T(1) / std::sqrt(w.col[k]);
    const T s = job.maximize ? T(-1) : T(1);
    for (i64 gi = 0; gi < nb && !wide(); ++gi) {
      T* re = w.re + gi * n * m;
      T* ce = w.ce + gi * n * m;
      for (i64 i = 0; i < n; ++i) {
        const T r = s * w.rf[gi * n + i];
        for (i64 j = 0; j < m; ++j) {
          re[i * m + j] = r;
          ce[i * m + j] = w.cf[gi * m + j];
        }
      }
    }
    return any;
  }

  // U of element e (index within the batch) of group gi, element by element:
  // as Factored::update, in the order of the vector loops, (s*r)*g*c, or,
  // where the group clamps, torch's floored V.
  T update(const Scratch& w, i64 gi, i64 e, T gv) const {
    const i64 n = rows(), m = cols();
    const i64 i = gi * n + (e - gi * n * m) / m;
    const i64 j = gi * m + (e - gi * n * m) % m;
    const T s = job.maximize ? T(-1) : T(1);
    if (w.clamp[gi]) return floored_update(s * gv, w.ratio[i] * w.col[j], static_cast<T>(job.eps1));
    return (s * w.rf[i]) * gv * w.cf[j];
  }

  // G1 for groups [ob, ob + nb): statistics, state, the sums of U^2.
  void batch1(i64 ob, i64 nb, Scratch& w, Wide& usq_lanes, double* usq) const {
    const P* gb = static_cast<const P*>(job.grad) + ob * rows() * cols();
    const T add = job.torch_variant ? T(0) : static_cast<T>(job.eps1);
    const i64 n = rows(), m = cols(), nm = n * m;
    for (i64 k = 0; k < nb * m; ++k) w.cs[k] = 0;
    for (i64 gi = 0; gi < nb && MM == 0 && m >= kLanes; ++gi) {
      // Rows long enough for the vector loops of the large-matrix pass 1.
      const Factored<P, S> f{job};
      i64 i = 0;
      for (; i + kRows1 <= n; i += kRows1) {
        f.template rows1<kRows1, true>(gb + (gi * n + i) * m, w.cs + gi * m, add, w.rs + gi * n + i);
      }
      for (; i < n; ++i) {
        f.template rows1<1, true>(gb + (gi * n + i) * m, w.cs + gi * m, add, w.rs + gi * n + i);
      }
    }
    for (i64 gi = 0; gi < nb && !(MM == 0 && m >= kLanes); ++gi) {
      for (i64 i = 0; i < n; ++i) {
        double row = 0;
        for (i64 j = 0; j < m; ++j) {
          const T gv = load<T>(gb, (gi * n + i) * m + j);
          const T sq = gv * gv + add;
          row += sq;
          w.cs[gi * m + j] += sq;
        }
        w.rs[gi * n + i] = row;
      }
    }
    advance(ob, nb, w);
    const bool any_clamp = factors(ob, nb, w);
    const i64 len = nb * nm;
    i64 e = 0;
    if (!any_clamp && wide()) {
      const Factored<P, S> f{job};
      Wide unused;
      for (i64 gi = 0; gi < nb; ++gi) {
        for (i64 i = 0; i < n;) {
          const i64 at = (gi * n + i) * m;
          const T* R = w.rf + gi * n + i;
          if (i + kGroupRows <= n) {
            f.template rows2<kGroupRows, true, false>(gb + at, nullptr, R, w.cf + gi * m, usq_lanes, unused, usq, nullptr);
            i += kGroupRows;
          } else {
            f.template rows2<1, true, false>(gb + at, nullptr, R, w.cf + gi * m, usq_lanes, unused, usq, nullptr);
            i += 1;
          }
        }
      }
      e = len;
    } else if (!any_clamp) {
      const i64 lv = len - len % kLanes;
      for (; e < lv; e += kRun) {
        const i64 end = e + kRun < lv ? e + kRun : lv;
        V a{};
        for (i64 c = e; c < end; c += kLanes) {
          const V u = vload<T>(w.re + c) * vload<T>(gb + c) * vload<T>(w.ce + c);
          a += u * u;
        }
        usq_lanes.add(a);
      }
      e = lv;
    }
    for (; e < len; ++e) {
      const T u = update(w, e / nm, e, load<T>(gb, e));
      usq[e % kLanes] += static_cast<double>(u) * u;
    }
  }

  // G2 for groups [ob, ob + nb).
  void batch2(i64 ob, i64 nb, Scratch& w) const {
    const Factored<P, S> f{job};
    const auto span = f.pick_span3();
    const auto one = f.template pick_rows3<1>(), several = f.template pick_rows3<kGroupRows>();
    const P* g = static_cast<const P*>(job.grad);
    P* p = static_cast<P*>(job.param);
    S* mom = static_cast<S*>(job.exp_avg);
    const i64 nm = rows() * cols();
    const i64 base = ob * nm;
    const bool any_clamp = factors(ob, nb, w);
    if (!any_clamp && wide()) {
      const i64 n = rows(), m = cols();
      for (i64 gi = 0; gi < nb; ++gi) {
        for (i64 i = 0; i < n;) {
          const i64 nr = i + kGroupRows <= n ? kGroupRows : 1;
          (f.*(nr == kGroupRows ? several : one))(p, g, mom, base + (gi * n + i) * m, m,
                                              w.rf + gi * n + i, w.cf + gi * m, 1, nullptr,
                                              nullptr);
          i += nr;
        }
      }
      return;
    }
    if (!any_clamp) {
      (f.*span)(p, g, mom, base, nb * nm, w.re, w.ce);
      return;
    }
    for (i64 e = 0; e < nb * nm; ++e) {
      const T u = update(w, e / nm, e, load<T>(g, base + e));
      f.put(p, base + e, f.apply(load<T>(p, base + e), u, mom, base + e));
    }
  }

  // ------------------------------------------------ the passes
  void pass1(i64 block) const {
    Scratch& w = *static_cast<Scratch*>(scratch);
    const P* p = static_cast<const P*>(job.param);
    const i64 nm = rows() * cols();
    Wide usq_lanes, psq_lanes;
    double usq[kLanes] = {}, psq[kLanes] = {};
    i64 o0, o1;
    range(block, o0, o1);
    for (i64 ob = o0; ob < o1; ob += batch()) {
      const i64 nb = ob + batch() < o1 ? batch() : o1 - ob;
      i64 done = 0;
      if constexpr (kLaneGroups) {
        lanes1(ob, nb / kLanes, usq_lanes);
        done = nb / kLanes * kLanes;
      }
      if (done < nb) batch1(ob + done, nb - done, w, usq_lanes, usq);
      if (!job.param_sq_known) psq_range(p + ob * nm, nb * nm, psq_lanes, psq);
    }
    job.update_sq[block] = usq_lanes.sum() + lane_sum(usq);
    if (!job.param_sq_known) job.param_sq[block] = psq_lanes.sum() + lane_sum(psq);
  }

  template <int Order, bool Momentum, bool Decay>
  void pass2_of(i64 block) const {
    Scratch& w = *static_cast<Scratch*>(scratch);
    const Factored<P, S> f{job};
    const typename Factored<P, S>::template Tail<Order, Momentum, Decay> tail(f);
    const bool vectors = f.vectors();
    const P* p = static_cast<const P*>(job.param);
    const i64 nm = rows() * cols();
    Wide psq_lanes;
    double psq[kLanes] = {};
    i64 o0, o1;
    range(block, o0, o1);
    for (i64 ob = o0; ob < o1; ob += batch()) {
      const i64 nb = ob + batch() < o1 ? batch() : o1 - ob;
      i64 done = 0;
      // The new param^2 of the batch: as the lanes write it where they write
      // the compute type, else read back (from cache).
      const bool streamed = kLaneGroups && std::is_same_v<P, T> && vectors && job.param_sq_next;
      if constexpr (kLaneGroups) {
        lanes2(ob, nb / kLanes, tail, vectors, streamed ? &psq_lanes : nullptr);
        done = nb / kLanes * kLanes;
      }
      if (done < nb) batch2(ob + done, nb - done, w);
      // The rest starts on a run's boundary (done * 9 is a multiple of 72).
      const i64 from = streamed ? done * nm : 0;
      if (job.param_sq_next) psq_range(p + (ob * nm + from), nb * nm - from, psq_lanes, psq);
    }
    if (job.param_sq_next) job.param_sq_next[block] = psq_lanes.sum() + lane_sum(psq);
  }

  template <int Order>
  void pass2_order(i64 block) const {
    if (job.momentum) {
      job.weight_decay ? pass2_of<Order, true, true>(block) : pass2_of<Order, true, false>(block);
    } else {
      job.weight_decay ? pass2_of<Order, false, true>(block) : pass2_of<Order, false, false>(block);
    }
  }

  void pass2(i64 block) const {
    switch (Factored<P, S>{job}.order()) {
      case kTorch: pass2_order<kTorch>(block); break;
      case kTransformers: pass2_order<kTransformers>(block); break;
      default: pass2_order<kBigVision>(block); break;
    }
  }

  void run(Pass pass, i64 block) const {
    if (pass == Pass::G1) {
      pass1(block);
    } else {
      pass2(block);
    }
  }
};

// ---------------------------------------------------------------- unfactored
template <class P, class S>
struct Unfactored {
  using T = typename Compute<P>::type;
  const Job& job;

  void range(i64 block, i64& x0, i64& x1) const {
    x0 = block * job.block_size;
    x1 = x0 + job.block_size < job.numel ? x0 + job.block_size : job.numel;
  }

  // The second moment, updated in place; U uses the value as stored.
  void pass1(i64 block) const {
    const P* g = static_cast<const P*>(job.grad);
    const P* p = static_cast<const P*>(job.param);
    S* v = static_cast<S*>(job.variance);
    const T s = job.maximize ? T(-1) : T(1);
    const T e = static_cast<T>(job.eps1);
    const T w = static_cast<T>(job.lerp_weight);
    const T b2 = static_cast<T>(job.beta2);
    const T ob2 = static_cast<T>(1.0 - job.beta2);
    double psq[kLanes] = {}, usq[kLanes] = {};
    i64 x0, x1;
    range(block, x0, x1);
    const bool with_p = !job.param_sq_known;
    for (i64 x = x0; x < x1; ++x) {
      const T gv = s * load<T>(g, x);
      if (with_p) {
        const T pv = load<T>(p, x);
        psq[x % kLanes] += static_cast<double>(pv) * pv;
      }
      T vv = load<T>(v, x);
      const T sq = job.torch_variant ? gv * gv : gv * gv + e;
      vv = job.stats_lerp ? lerp(vv, sq, w) : vv * b2 + sq * ob2;
      store(v, x, vv);
      vv = load<T>(v, x);
      const T u = job.torch_variant ? floored_update(gv, vv, e) : gv * rsqrt(vv);
      usq[x % kLanes] += static_cast<double>(u) * u;
    }
    if (with_p) job.param_sq[block] = lane_sum(psq);
    job.update_sq[block] = lane_sum(usq);
  }

  void pass2(i64 block) const {
    const Factored<P, S> f{job};  // shares apply() and put()
    const P* g = static_cast<const P*>(job.grad);
    P* p = static_cast<P*>(job.param);
    const S* v = static_cast<const S*>(job.variance);
    S* m = static_cast<S*>(job.exp_avg);
    const T s = job.maximize ? T(-1) : T(1);
    const T e = static_cast<T>(job.eps1);
    i64 x0, x1;
    range(block, x0, x1);
    double psq[kLanes] = {};  // the new param^2, in pass 1's order
    const bool sums = job.param_sq_next != nullptr;
    for (i64 x = x0; x < x1; ++x) {
      const T gv = s * load<T>(g, x);
      const T vv = load<T>(v, x);
      const T u = job.torch_variant ? floored_update(gv, vv, e) : gv * rsqrt(vv);
      f.put(p, x, f.apply(load<T>(p, x), u, m, x));
      if (sums) {
        const T pv = load<T>(p, x);
        psq[x % kLanes] += static_cast<double>(pv) * pv;
      }
    }
    if (sums) job.param_sq_next[block] = lane_sum(psq);
  }
};

// ---------------------------------------------------------------- caution
// Pass C2: the momentum stored by the last pass, masked where it disagrees in
// sign with the gradient and scaled by caution_scale (1 / the kept fraction),
// then the rest of the variant's arithmetic, as Factored::apply.
template <class P, class S>
struct Caution {
  using T = typename Compute<P>::type;
  const Job& job;

  void pass(i64 block) const {
    const Factored<P, S> f{job};
    const P* g = static_cast<const P*>(job.grad);
    P* p = static_cast<P*>(job.param);
    const S* m = static_cast<const S*>(job.exp_avg);
    const T s = job.maximize ? T(-1) : T(1);
    const T scale = static_cast<T>(job.caution_scale);
    const i64 x0 = block * job.block_size;
    const i64 x1 = x0 + job.block_size < job.numel ? x0 + job.block_size : job.numel;
    for (i64 x = x0; x < x1; ++x) {
      T u = job.momentum_bf16 ? static_cast<T>(to_float(reinterpret_cast<const bf16*>(m)[x]))
                              : load<T>(m, x);
      const T gv = s * load<T>(g, x);
      u = u * (u * gv > T(0) ? scale : T(0));
      T pv = load<T>(p, x);
      if (job.big_vision) {
        u = u * static_cast<T>(job.alpha);
        if (job.weight_decay) pv = pv * static_cast<T>(job.decay_mult);
      } else if (job.torch_variant) {
        if (job.weight_decay) pv = pv * static_cast<T>(job.decay_mult);
      } else {
        if (job.weight_decay) pv = pv + pv * static_cast<T>(job.decay_coef);
      }
      f.put(p, x, pv - u);
    }
  }
};

template <class P, class S>
void run_typed(const Job& job, Pass pass, i64 b0, i64 b1, void* scratch) {
  // Each pass starts where the last one ended: pass 2 (and U2) takes a
  // thread's blocks last to first, so that the blocks it meets first are
  // the ones pass 1 read last and the cache still holds; pass 3 then meets
  // first what pass 2 read last. Per-block sums make the order irrelevant
  // to the results.
  const bool backwards = pass == Pass::F2 || pass == Pass::U2 || pass == Pass::G2;
  const bool counts = job.caution && (pass == Pass::F3 || pass == Pass::U2 || pass == Pass::G2);
  for (i64 n = 0; n < b1 - b0; ++n) {
    const i64 b = backwards ? b1 - 1 - n : b0 + n;
    tl_caution = 0;
    switch (pass) {
      case Pass::F1: Factored<P, S>{job}.pass1(b); break;
      case Pass::F2: Factored<P, S>{job}.pass2(b); break;
      case Pass::F3: Factored<P, S>{job}.pass3(b); break;
      case Pass::U1: Unfactored<P, S>{job}.pass1(b); break;
      case Pass::U2: Unfactored<P, S>{job}.pass2(b); break;
      case Pass::G1:
      case Pass::G2:
        if (job.n == 3 && job.m == 3) {
          Groups<P, S, 3, 3>{job, scratch}.run(pass, b);
        } else {
          Groups<P, S>{job, scratch}.run(pass, b);
        }
        break;
      case Pass::C2: Caution<P, S>{job}.pass(b); break;
    }
    if (counts) job.caution_count[b] = tl_caution;
  }
}

}  // namespace

void run(const Job& job, Pass pass, std::int64_t b0, std::int64_t b1, void* scratch) {
  if (job.param_dtype == Dtype::F32) {
    run_typed<float, float>(job, pass, b0, b1, scratch);
  } else if (job.param_dtype == Dtype::F64) {
    run_typed<double, double>(job, pass, b0, b1, scratch);
  } else if (job.state_dtype == Dtype::F32) {
    run_typed<bf16, float>(job, pass, b0, b1, scratch);
  } else {
    run_typed<bf16, bf16>(job, pass, b0, b1, scratch);
  }
}

}  // namespace tcltorch::kernel::TCLTORCH_KERNEL_NS
