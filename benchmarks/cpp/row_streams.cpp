// How fast one core walks the gradient and the parameter of large matrices
// in the access patterns the fused kernel could take (csrc/kernel/loops.h,
// kRows2, kRows3, kRowsF1): one row at a time in memory order, or several
// rows at once, spread over a block or neighbours. Plain loops of the same
// arithmetic shape as the kernel's passes, on 4 matrices of 2048 x 2048
// float32 (128 MB of gradient and parameter: more than the caches), each
// pattern timed 15 times, interleaved; prints the median of each.
//
// What it showed (2026-12-02, 2 cores of an AMD EPYC): the update of four
// rows at once took twice as long as one row at a time, as did the sums of
// eight rows at once against one row with a column buffer; the one-row
// loops ran as fast as the bandwidth floor's. A likely cause for the update:
// it writes one row and then reads the next at the same column, 8 KiB on,
// an address the core cannot tell apart from the store's by its low 12
// bits, so the loads wait for the store. On 2 cores of an Intel Xeon with
// AVX-512 (2026-12-03) the sums of eight rows spread over the block took
// 4.1-5.1 ms against 6.8-7.7 ms one row at a time, and the update of four
// rows 8.6-9.8 ms against 9.7-10.8 ms: pass 1 now takes eight rows spread.
//
//   cmake --build build/bench-cpp && build/bench-cpp/row_streams
//
// No LibTorch: the loops are the point, not the library.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace {

using i64 = std::int64_t;
typedef float v8 __attribute__((vector_size(32)));
typedef double d4 __attribute__((vector_size(32)));

constexpr int kMatrices = 4;
constexpr i64 kRowsN = 2048, kCols = 2048, kBlockRows = 128, kRun = 128;

v8 load(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
void store(float* p, v8 v) { std::memcpy(p, &v, sizeof v); }
void add_double(double* d, v8 v) {  // d[0..8) += v, in double
  d4 lo, hi;
  std::memcpy(&lo, d, sizeof lo);
  std::memcpy(&hi, d + 4, sizeof hi);
  lo += __builtin_convertvector(__builtin_shufflevector(v, v, 0, 1, 2, 3), d4);
  hi += __builtin_convertvector(__builtin_shufflevector(v, v, 4, 5, 6, 7), d4);
  std::memcpy(d, &lo, sizeof lo);
  std::memcpy(d + 4, &hi, sizeof hi);
}

// Pass 3's shape: p -= coef * (r_row * g * c_col), NR rows at once.
template <int NR>
void update_rows(float* p, const float* g, const float* c, i64 r0, i64 r1, bool spread) {
  const v8 coef = v8{} + 1e-12f, r = v8{} + 0.5f;
  auto rows = [&](i64 row, i64 sr) {
    for (i64 x = 0; x < kCols; x += 8) {
      const v8 cv = load(c + x);
      for (int k = 0; k < NR; ++k) {
        const i64 at = (row + k * sr) * kCols + x;
        store(p + at, load(p + at) - coef * (r * load(g + at) * cv));
      }
    }
  };
  if (spread) {
    const i64 q = (r1 - r0) / NR;
    for (i64 k = 0; k < q; ++k) rows(r0 + k, q);
  } else {
    for (i64 row = r0; row < r1; row += NR) rows(row, 1);
  }
}

// Pass 1's shape, NR rows at once (q apart): g^2 summed along each row and,
// over the NR rows, added into double column sums.
template <int NR>
void sums_rows(const float* g, double* cols, double* rowsum, i64 r0, i64 r1) {
  const i64 q = (r1 - r0) / NR;
  for (i64 k0 = 0; k0 < q; ++k0) {
    double total[NR] = {};
    for (i64 j = 0; j < kCols; j += kRun) {
      v8 acc[NR] = {};
      for (i64 x = j; x < j + kRun; x += 8) {
        v8 col{};
        for (int k = 0; k < NR; ++k) {
          const v8 gv = load(g + (r0 + k0 + k * q) * kCols + x);
          acc[k] += gv * gv;
          col += gv * gv;
        }
        add_double(cols + x, col);
      }
      for (int k = 0; k < NR; ++k)
        for (int l = 0; l < 8; ++l) total[k] += acc[k][l];
    }
    for (int k = 0; k < NR; ++k) rowsum[r0 + k0 + k * q] = total[k];
  }
}

// Pass 1's shape one row at a time: column sums of 16 rows in float first.
void sums_one_row(const float* g, double* cols, double* rowsum, float* colf, i64 r0, i64 r1) {
  for (i64 row = r0; row < r1; ++row) {
    const bool first = (row - r0) % 16 == 0;
    double total = 0;
    for (i64 j = 0; j < kCols; j += kRun) {
      v8 acc{};
      for (i64 x = j; x < j + kRun; x += 8) {
        const v8 gv = load(g + row * kCols + x);
        acc += gv * gv;
        store(colf + x, first ? gv * gv : load(colf + x) + gv * gv);
      }
      for (int l = 0; l < 8; ++l) total += acc[l];
    }
    rowsum[row] = total;
    if ((row - r0) % 16 == 15 || row == r1 - 1)
      for (i64 x = 0; x < kCols; x += 8) add_double(cols + x, load(colf + x));
  }
}

double sum_squares(const float* g, i64 n) {  // the bandwidth floor's read
  d4 a{}, b{};
  for (i64 i = 0; i < n; i += 8) {
    const v8 v = load(g + i) * load(g + i);
    a += __builtin_convertvector(__builtin_shufflevector(v, v, 0, 1, 2, 3), d4);
    b += __builtin_convertvector(__builtin_shufflevector(v, v, 4, 5, 6, 7), d4);
  }
  const d4 s = a + b;
  return s[0] + s[1] + s[2] + s[3];
}

float* matrix() {
  auto* p = static_cast<float*>(std::aligned_alloc(4096, kRowsN * kCols * sizeof(float)));
  for (i64 i = 0; i < kRowsN * kCols; ++i) p[i] = static_cast<float>(i % 7) * 0.1f;
  return p;
}

}  // namespace

int main() {
#if defined(__x86_64__) && defined(__AVX2__)
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2")) {
    std::printf("row_streams: built for AVX2, which this CPU lacks\n");
    return 0;
  }
#endif
  std::vector<float*> g, p;
  for (int t = 0; t < kMatrices; ++t) {
    g.push_back(matrix());
    p.push_back(matrix());
  }
  std::vector<float> c(kCols, 0.25f), colf(kCols);
  std::vector<double> cols(kCols), rowsum(kRowsN);
  double sink = 0;
  // Each pattern over all matrices, block by block (128 rows, as the kernel
  // cuts a 2048 x 2048 matrix).
  auto blocks = [&](const std::function<void(int, i64, i64)>& f) {
    for (int t = 0; t < kMatrices; ++t)
      for (i64 r0 = 0; r0 < kRowsN; r0 += kBlockRows) f(t, r0, r0 + kBlockRows);
  };
  struct Pattern {
    std::string name;
    double bytes_per_element;
    std::function<void()> run;
  };
  const std::vector<Pattern> patterns = {
      {"update, 1 row at a time", 12, [&] { blocks([&](int t, i64 a, i64 b) { update_rows<1>(p[t], g[t], c.data(), a, b, false); }); }},
      {"update, 4 rows spread over the block", 12, [&] { blocks([&](int t, i64 a, i64 b) { update_rows<4>(p[t], g[t], c.data(), a, b, true); }); }},
      {"update, 4 neighbouring rows", 12, [&] { blocks([&](int t, i64 a, i64 b) { update_rows<4>(p[t], g[t], c.data(), a, b, false); }); }},
      {"update: p -= a * g, one stream (floor)", 12, [&] { blocks([&](int t, i64 a, i64 b) {
         for (i64 i = a * kCols; i < b * kCols; i += 8) store(p[t] + i, load(p[t] + i) - (v8{} + 1e-12f) * load(g[t] + i)); }); }},
      {"sums, 1 row at a time (16-row column buffer)", 4, [&] { blocks([&](int t, i64 a, i64 b) { sums_one_row(g[t], cols.data(), rowsum.data(), colf.data(), a, b); }); }},
      {"sums, 8 rows spread over the block", 4, [&] { blocks([&](int t, i64 a, i64 b) { sums_rows<8>(g[t], cols.data(), rowsum.data(), a, b); }); }},
      {"sum of squares, one stream (floor)", 4, [&] { blocks([&](int t, i64 a, i64 b) { sink += sum_squares(g[t] + a * kCols, (b - a) * kCols); }); }},
  };
  std::vector<std::vector<double>> seconds(patterns.size());
  for (int rep = 0; rep < 15; ++rep) {
    for (size_t k = 0; k < patterns.size(); ++k) {
      const auto t0 = std::chrono::steady_clock::now();
      patterns[k].run();
      seconds[k].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  const double elements = static_cast<double>(kMatrices) * kRowsN * kCols;
  std::printf("%-46s %10s %8s\n", "pattern (4 x 2048x2048 float32, 1 core)", "median ms", "GB/s");
  for (size_t k = 0; k < patterns.size(); ++k) {
    auto v = seconds[k];
    std::sort(v.begin(), v.end());
    const double s = v[v.size() / 2];
    std::printf("%-46s %10.3f %8.1f\n", patterns[k].name.c_str(), s * 1e3,
                elements * patterns[k].bytes_per_element / s / 1e9);
  }
  std::printf("(checksum %g)\n", sink + rowsum[5] + cols[7]);
  for (int t = 0; t < kMatrices; ++t) {
    std::free(g[t]);
    std::free(p[t]);
  }
  return 0;
}
