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

#include "job.h"

namespace tcltorch::kernel::TCLTORCH_KERNEL_NS {
namespace {

using i64 = std::int64_t;
constexpr int kLanes = 8;
// Runs of this many elements, and of this many rows for column sums, are
// summed in the compute type before joining a double sum.
constexpr i64 kRun = 16 * kLanes;
constexpr i64 kRowsPerFlush = 16;

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

template <class T>
inline T lerp(T self, T end, T weight) {
  // ATen's lerp: exact at both ends.
  return weight < T(0.5) ? self + weight * (end - self)
                         : end - (end - self) * (T(1) - weight);
}

template <class T>
inline T rsqrt(T x) {
  return T(1) / std::sqrt(x);
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

template <class T>
inline double vsum(vec<T> v) {
  double s = 0;
  for (int l = 0; l < kLanes; ++l) s += v[l];
  return s;
}
template <class T>
inline vec<T> splat(T x) {
  return vec<T>{} + x;
}

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

  // Pass 1: G^2 (+ eps1 for the transformers variant) summed along rows into
  // row_sums and along columns into this block's column partials, and the
  // sum of param^2. Short runs are summed in the compute type (vectorised),
  // then added into double in a fixed order.
  void pass1(i64 block) const {
    const i64 cols = job.O * job.K * job.m * job.L;
    const i64 units = job.O * job.n * job.K;
    const i64 u0 = block * job.block_size;
    const i64 u1 = u0 + job.block_size < units ? u0 + job.block_size : units;
    double* colp = job.col_partials;
    T* colf = static_cast<T*>(job.col_scratch);
    i64 c0 = 0, c1 = cols;  // the columns this block writes
    if (job.cols_owned) {
      const i64 per_o = job.n * job.K, col_per_o = job.K * job.m * job.L;
      c0 = (u0 / per_o) * col_per_o;
      c1 = ((u1 + per_o - 1) / per_o) * col_per_o;
    } else {
      colp += block * cols;
      colf += block * cols;
    }
    for (i64 c = c0; c < c1; ++c) colp[c] = 0;
    for (i64 c = c0; c < c1; ++c) colf[c] = 0;
    const T add = job.torch_variant ? T(0) : static_cast<T>(job.eps1);
    const T s = sign();
    const P* g = grad();
    const P* p = param();
    double psq_total = 0;
    // Columns touched since colf was last added into colp.
    i64 lo = cols, hi = 0, pending = 0;
    auto flush = [&] {
      for (i64 c = lo; c < hi; ++c) {
        colp[c] += colf[c];
        colf[c] = 0;
      }
      lo = cols;
      hi = 0;
      pending = 0;
    };
    for (i64 unit = u0; unit < u1; ++unit) {
      i64 o, i, k;
      unit_index(unit, o, i, k);
      const i64 col_base = (o * job.K + k) * job.m * job.L;
      const i64 base = unit * job.m * job.L;
      lo = col_base < lo ? col_base : lo;
      hi = col_base + job.m * job.L > hi ? col_base + job.m * job.L : hi;
      if (job.L == 1) {
        const P* gl = g + base;
        const P* pl = p + base;
        T* cf = colf + col_base;
        double row_total = 0;
        i64 j = 0;
        const vec<T> vs = splat<T>(s), vadd = splat<T>(add);
        for (; j + kRun <= job.m; j += kRun) {
          vec<T> row{}, psq{};
          for (i64 c = j; c < j + kRun; c += kLanes) {
            const vec<T> gv = vs * vload<T>(gl + c);
            const vec<T> sq = gv * gv + vadd;
            row += sq;
            vstore<T>(cf + c, vload<T>(cf + c) + sq);
            const vec<T> pv = vload<T>(pl + c);
            psq += pv * pv;
          }
          row_total += vsum<T>(row);
          psq_total += vsum<T>(psq);
        }
        for (; j < job.m; ++j) {
          const T gv = s * load<T>(gl, j);
          const T sq = gv * gv + add;
          row_total += sq;
          cf[j] += sq;
          const T pv = load<T>(pl, j);
          psq_total += static_cast<double>(pv) * pv;
        }
        job.row_sums[unit] = row_total;
      } else {
        double* rows = job.row_sums + unit * job.L;
        for (i64 l = 0; l < job.L; ++l) rows[l] = 0;
        for (i64 j = 0; j < job.m; ++j) {
          const i64 line = base + j * job.L;
          T* cl = colf + col_base + j * job.L;
          for (i64 l = 0; l < job.L; ++l) {
            const T gv = s * load<T>(g, line + l);
            const T sq = gv * gv + add;
            rows[l] += sq;
            cl[l] += sq;
            const T pv = load<T>(p, line + l);
            psq_total += static_cast<double>(pv) * pv;
          }
        }
      }
      if (++pending == kRowsPerFlush) flush();
    }
    flush();
    job.param_sq[block] = psq_total;
  }

  // U of one element from its gradient and the two factors.
  T update(T gv, T r, T c) const {
    if (job.clamp) {
      const T e = static_cast<T>(job.eps1);
      const T v = r * c;
      return gv * rsqrt(v > e * e ? v : e * e);
    }
    return r * gv * c;  // the order of the vector loops: (s*r)*g*c
  }

  template <class Fn>
  void for_each(i64 block, Fn&& fn) const {
    const T* R = static_cast<const T*>(job.row_factor);
    const T* C = static_cast<const T*>(job.col_factor);
    const i64 units = job.O * job.n * job.K;
    const i64 u0 = block * job.block_size;
    const i64 u1 = u0 + job.block_size < units ? u0 + job.block_size : units;
    for (i64 unit = u0; unit < u1; ++unit) {
      i64 o, i, k;
      unit_index(unit, o, i, k);
      const i64 col_base = (o * job.K + k) * job.m * job.L;
      const i64 base = unit * job.m * job.L;
      if (job.L == 1) {
        fn(base, job.m, R + unit, 0, C + col_base);
      } else {
        for (i64 j = 0; j < job.m; ++j) {
          fn(base + j * job.L, job.L, R + unit * job.L, 1, C + col_base + j * job.L);
        }
      }
    }
  }

  void pass2(i64 block) const {
    const P* g = grad();
    const T s = sign();
    double usq[kLanes] = {};
    for_each(block, [&](i64 base, i64 len, const T* R, int rstride, const T* C) {
      if (rstride == 0 && !job.clamp) {
        const T r = R[0];
        const P* gl = g + base;
        const vec<T> vsr = splat<T>(s * r);
        i64 x = 0;
        for (; x + kRun <= len; x += kRun) {
          vec<T> part{};
          for (i64 c = x; c < x + kRun; c += kLanes) {
            const vec<T> u = vsr * vload<T>(gl + c) * vload<T>(C + c);
            part += u * u;
          }
          usq[0] += vsum<T>(part);
        }
        for (; x < len; ++x) {
          const T u = s * r * load<T>(g, base + x) * C[x];
          usq[x % kLanes] += static_cast<double>(u) * u;
        }
      } else {
        for (i64 x = 0; x < len; ++x) {
          const T u = update(s * load<T>(g, base + x), R[x * rstride], C[x]);
          usq[x % kLanes] += static_cast<double>(u) * u;
        }
      }
    });
    job.update_sq[block] = lane_sum(usq);
  }

  // The final arithmetic of one element, in the order of the references.
  inline T apply(T pv, T u, S* m, i64 idx) const {
    if (job.torch_variant) {
      if (job.weight_decay) pv = pv * static_cast<T>(job.decay_mult);
      if (!job.momentum) return pv - static_cast<T>(job.alpha / job.denom) * u;
      u = u * static_cast<T>(job.alpha / job.denom);
    } else {
      u = u / static_cast<T>(job.denom) * static_cast<T>(job.alpha);
      if (job.weight_decay) pv = pv + pv * static_cast<T>(job.decay_coef);
    }
    if (job.momentum) {
      const T b1 = static_cast<T>(job.beta1);
      const T mv = load<T>(m, idx) * b1 + u * (T(1) - b1);
      store(m, idx, mv);
      u = load<T>(m, idx);  // the update is the momentum as stored
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

  // One contiguous line with one row factor and no clamping: the common
  // case, with the variant's branches resolved at compile time so that the
  // loop vectorises.
  template <bool Torch, bool Momentum, bool Decay>
  void line3(P* p, const P* g, S* m, i64 base, i64 len, T r, const T* C) const {
    const T s = sign();
    const T coef = static_cast<T>(job.alpha / job.denom);
    const T alpha = static_cast<T>(job.alpha), denom = static_cast<T>(job.denom);
    const T mult = static_cast<T>(job.decay_mult), dcoef = static_cast<T>(job.decay_coef);
    const T b1 = static_cast<T>(job.beta1), ob1 = T(1) - b1;
    i64 x = 0;
    if (!job.stochastic_rounding) {
      const vec<T> vsr = splat<T>(s * r), vcoef = splat<T>(coef), valpha = splat<T>(alpha),
                   vdenom = splat<T>(denom), vmult = splat<T>(mult), vdcoef = splat<T>(dcoef),
                   vb1 = splat<T>(b1), vob1 = splat<T>(ob1);
      for (; x + kLanes <= len; x += kLanes) {
        const i64 idx = base + x;
        vec<T> u = vsr * vload<T>(g + idx) * vload<T>(C + x);
        vec<T> pv = vload<T>(p + idx);
        if constexpr (Torch) {
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
        vstore<T>(p + idx, pv - u);
      }
    }
    for (; x < len; ++x) {
      const i64 idx = base + x;
      T u = s * r * load<T>(g, idx) * C[x];
      T pv = load<T>(p, idx);
      if constexpr (Torch) {
        if constexpr (Decay) pv = pv * mult;
        u = u * coef;  // with momentum; without, p - coef*u below is the same
      } else {
        u = u / denom * alpha;
        if constexpr (Decay) pv = pv + pv * dcoef;
      }
      if constexpr (Momentum) {
        store(m, idx, load<T>(m, idx) * b1 + u * ob1);
        u = load<T>(m, idx);
      }
      put(p, idx, pv - u);
    }
  }

  using LineFn = void (Factored::*)(P*, const P*, S*, i64, i64, T, const T*) const;
  LineFn pick_line3() const {
    if (job.torch_variant) {
      if (job.momentum) return job.weight_decay ? &Factored::line3<true, true, true> : &Factored::line3<true, true, false>;
      return job.weight_decay ? &Factored::line3<true, false, true> : &Factored::line3<true, false, false>;
    }
    if (job.momentum) return job.weight_decay ? &Factored::line3<false, true, true> : &Factored::line3<false, true, false>;
    return job.weight_decay ? &Factored::line3<false, false, true> : &Factored::line3<false, false, false>;
  }

  void pass3(i64 block) const {
    const P* g = grad();
    P* p = param();
    S* m = static_cast<S*>(job.exp_avg);
    const T s = sign();
    const LineFn fast = pick_line3();
    for_each(block, [&](i64 base, i64 len, const T* R, int rstride, const T* C) {
      if (rstride == 0 && !job.clamp) {
        (this->*fast)(p, g, m, base, len, R[0], C);
        return;
      }
      for (i64 x = 0; x < len; ++x) {
        const i64 idx = base + x;
        const T u = update(s * load<T>(g, idx), R[x * rstride], C[x]);
        put(p, idx, apply(load<T>(p, idx), u, m, idx));
      }
    });
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
    for (i64 x = x0; x < x1; ++x) {
      const T gv = s * load<T>(g, x);
      const T pv = load<T>(p, x);
      psq[x % kLanes] += static_cast<double>(pv) * pv;
      T vv = load<T>(v, x);
      if (job.torch_variant) {
        vv = lerp(vv, gv * gv, w);
      } else {
        vv = vv * b2 + (gv * gv + e) * ob2;
      }
      store(v, x, vv);
      vv = load<T>(v, x);
      const T u = job.torch_variant ? gv * rsqrt(vv > e * e ? vv : e * e) : gv * rsqrt(vv);
      usq[x % kLanes] += static_cast<double>(u) * u;
    }
    job.param_sq[block] = lane_sum(psq);
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
    for (i64 x = x0; x < x1; ++x) {
      const T gv = s * load<T>(g, x);
      const T vv = load<T>(v, x);
      const T u = job.torch_variant ? gv * rsqrt(vv > e * e ? vv : e * e) : gv * rsqrt(vv);
      f.put(p, x, f.apply(load<T>(p, x), u, m, x));
    }
  }
};

template <class P, class S>
void run_typed(const Job& job, Pass pass, i64 b0, i64 b1) {
  for (i64 b = b0; b < b1; ++b) {
    switch (pass) {
      case Pass::F1: Factored<P, S>{job}.pass1(b); break;
      case Pass::F2: Factored<P, S>{job}.pass2(b); break;
      case Pass::F3: Factored<P, S>{job}.pass3(b); break;
      case Pass::U1: Unfactored<P, S>{job}.pass1(b); break;
      case Pass::U2: Unfactored<P, S>{job}.pass2(b); break;
    }
  }
}

}  // namespace

void run(const Job& job, Pass pass, std::int64_t b0, std::int64_t b1) {
  if (job.param_dtype == Dtype::F32) {
    run_typed<float, float>(job, pass, b0, b1);
  } else if (job.param_dtype == Dtype::F64) {
    run_typed<double, double>(job, pass, b0, b1);
  } else if (job.state_dtype == Dtype::F32) {
    run_typed<bf16, float>(job, pass, b0, b1);
  } else {
    run_typed<bf16, bf16>(job, pass, b0, b1);
  }
}

}  // namespace tcltorch::kernel::TCLTORCH_KERNEL_NS
