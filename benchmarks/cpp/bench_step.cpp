// The C++ side of benchmarks/run.py.
//
//   bench_step rows        reads commands from stdin, one a line, and answers
//                          each with one line of JSON:
//     open <id> time|floor <threads> <spec>
//           makes the parameter set and, for `time`, a tcltorch::Adafactor
//           with default options (for `floor`: the bandwidth floor below)
//     run <id> <k>         k steps; answers {"s": mean seconds per step}
//     close <id>
//   bench_step peak <spec> peak resident memory one step adds (fresh process)
//
// <spec> is a parameter set: items joined by '+', each COUNT*D0xD1x..., e.g.
// "4*2048x2048+8*2048". Parameters and gradients are float32 randn.
//
// run.py times every door the same way (benchmarks/bench/timing.py): batches
// of steps, timed where they run (here with std::chrono), interleaved with
// the other rows of the same parameter set.
#include <ATen/Parallel.h>
#include <tcltorch/adafactor.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

// ------------------------------------------------------------ parameter sets
std::vector<std::vector<int64_t>> parse_spec(const std::string& spec) {
  std::vector<std::vector<int64_t>> shapes;
  std::stringstream items(spec);
  std::string item;
  while (std::getline(items, item, '+')) {
    int64_t count = 1;
    auto star = item.find('*');
    if (star != std::string::npos) {
      count = std::stoll(item.substr(0, star));
      item = item.substr(star + 1);
    }
    std::vector<int64_t> shape;
    std::stringstream dims(item);
    std::string d;
    while (std::getline(dims, d, 'x')) shape.push_back(std::stoll(d));
    if (shape.empty()) throw std::runtime_error("bad spec item in " + spec);
    for (int64_t k = 0; k < count; ++k) shapes.push_back(shape);
  }
  if (shapes.empty()) throw std::runtime_error("empty spec");
  return shapes;
}

std::vector<torch::Tensor> make_params(const std::string& spec) {
  torch::manual_seed(0);
  std::vector<torch::Tensor> params;
  for (const auto& shape : parse_spec(spec)) {
    auto p = torch::randn(shape);
    p.mutable_grad() = torch::randn(shape);
    params.push_back(p);
  }
  return params;
}

int64_t numel_of(const std::vector<torch::Tensor>& params) {
  int64_t n = 0;
  for (const auto& p : params) n += p.numel();
  return n;
}

// ------------------------------------------------------------ bandwidth floor
// The memory traffic of an Adafactor step in its usual form (the fused
// kernel reads a large matrix's gradient twice, not three times: see
// docs/algorithm.md): three reads of the gradient
// (row/column statistics, RMS of the update, the update) and one read and one
// write of the parameter, tensor by tensor, each pass spread over ATen's
// threads in chunks of 32K elements as the fused kernel does. The arithmetic
// is a sum of squares (passes 1, 2) and p -= a * g (pass 3): as little as can
// keep the compiler from dropping the loads, over eight-float vectors with
// four accumulators so that the loop is bound by memory, not by adds.
// target_clones compiles an AVX2 and a portable copy and picks one at load.
typedef float v8 __attribute__((vector_size(32)));

__attribute__((target_clones("avx2", "default"))) double sum_squares(const float* g,
                                                                     int64_t n) {
  v8 a0{}, a1{}, a2{}, a3{};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    v8 x0, x1, x2, x3;
    std::memcpy(&x0, g + i, sizeof x0);
    std::memcpy(&x1, g + i + 8, sizeof x1);
    std::memcpy(&x2, g + i + 16, sizeof x2);
    std::memcpy(&x3, g + i + 24, sizeof x3);
    a0 += x0 * x0;
    a1 += x1 * x1;
    a2 += x2 * x2;
    a3 += x3 * x3;
  }
  const v8 a = (a0 + a1) + (a2 + a3);
  double s = 0;
  for (int l = 0; l < 8; ++l) s += a[l];
  for (; i < n; ++i) s += static_cast<double>(g[i]) * g[i];
  return s;
}

__attribute__((target_clones("avx2", "default"))) void subtract_scaled(float* p,
                                                                       const float* g,
                                                                       float a, int64_t n) {
  const v8 va = v8{} + a;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    v8 p0, p1, g0, g1;
    std::memcpy(&p0, p + i, sizeof p0);
    std::memcpy(&p1, p + i + 8, sizeof p1);
    std::memcpy(&g0, g + i, sizeof g0);
    std::memcpy(&g1, g + i + 8, sizeof g1);
    p0 -= va * g0;
    p1 -= va * g1;
    std::memcpy(p + i, &p0, sizeof p0);
    std::memcpy(p + i + 8, &p1, sizeof p1);
  }
  for (; i < n; ++i) p[i] -= a * g[i];
}

constexpr int64_t kGrain = 32768;

double parallel_sum_squares(const float* g, int64_t n) {
  return at::parallel_reduce(
      0, n, kGrain, 0.0,
      [&](int64_t b, int64_t e, double acc) { return acc + sum_squares(g + b, e - b); },
      [](double x, double y) { return x + y; });
}

void floor_step(std::vector<torch::Tensor>& params) {
  for (auto& p : params) {
    float* pd = p.data_ptr<float>();
    const float* gd = p.grad().data_ptr<float>();
    const int64_t n = p.numel();
    const double s1 = parallel_sum_squares(gd, n);  // gradient read 1
    const double s2 = parallel_sum_squares(gd, n);  // gradient read 2
    // A step size that depends on both sums (so neither pass can be
    // dropped) and is small enough to leave the parameters almost unchanged.
    const float a = static_cast<float>(1e-12 / (1.0 + std::sqrt(s1 + s2)));
    at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
      subtract_scaled(pd + b, gd + b, a, e - b);  // gradient read 3, param r+w
    });
  }
}

// ------------------------------------------------------------ memory
int64_t status_bytes(const char* field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const std::string key = std::string(field) + ":";
  while (std::getline(f, line)) {
    if (line.rfind(key, 0) == 0) {
      std::istringstream in(line.substr(key.size()));
      int64_t kb = 0;
      in >> kb;
      return kb * 1024;
    }
  }
  throw std::runtime_error(std::string("no ") + field + " in /proc/self/status");
}

int64_t state_bytes(tcltorch::Adafactor& opt) {
  int64_t bytes = 0;
  for (auto& [key, base] : opt.state()) {
    auto& s = static_cast<tcltorch::AdafactorParamState&>(*base);
    for (const auto& t : {s.step(), s.row_var(), s.col_var(), s.variance(), s.exp_avg()}) {
      if (t.defined()) bytes += t.numel() * static_cast<int64_t>(t.element_size());
    }
  }
  return bytes;
}

// ------------------------------------------------------------ rows
struct RowState {
  std::vector<torch::Tensor> params;
  std::unique_ptr<tcltorch::Adafactor> optimizer;  // null: the floor
};

double run_batch(RowState& row, int64_t k) {
  torch::NoGradGuard no_grad;
  const auto t0 = Clock::now();
  if (row.optimizer) {
    for (int64_t i = 0; i < k; ++i) row.optimizer->step();
  } else {
    for (int64_t i = 0; i < k; ++i) floor_step(row.params);
  }
  return std::chrono::duration<double>(Clock::now() - t0).count() / static_cast<double>(k);
}

int run_rows() {
  std::map<std::string, RowState> rows;
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty()) continue;
    std::istringstream in(line);
    std::string cmd, id;
    in >> cmd >> id;
    std::ostringstream out;
    out.precision(9);
    if (cmd == "open") {
      std::string kind, spec;
      int threads = 0;
      in >> kind >> threads >> spec;
      if (!in || (kind != "time" && kind != "floor")) {
        std::cerr << "bench_step: bad command: " << line << "\n";
        return 2;
      }
      at::set_num_threads(threads);
      RowState row;
      row.params = make_params(spec);
      if (kind == "time") row.optimizer = std::make_unique<tcltorch::Adafactor>(row.params);
      out << "{\"id\":\"" << id << "\",\"threads\":" << at::get_num_threads()
          << ",\"numel\":" << numel_of(row.params) << ",\"tensors\":" << row.params.size()
          << "}";
      rows[id] = std::move(row);
    } else if (cmd == "run") {
      int64_t k = 0;
      in >> k;
      auto it = rows.find(id);
      if (!in || k < 1 || it == rows.end()) {
        std::cerr << "bench_step: bad command: " << line << "\n";
        return 2;
      }
      out << "{\"s\":" << run_batch(it->second, k) << "}";
    } else if (cmd == "close") {
      rows.erase(id);
      out << "{\"closed\":\"" << id << "\"}";
    } else {
      std::cerr << "bench_step: bad command: " << line << "\n";
      return 2;
    }
    std::cout << out.str() << std::endl;
  }
  return 0;
}

int run_peak(const std::string& spec) {
  auto params = make_params(spec);
  tcltorch::Adafactor opt(params);
  opt.step();  // creates the state, warms threads and allocator
  for (auto& p : params) p.mutable_grad().normal_();
  {
    std::ofstream clear("/proc/self/clear_refs");
    clear << "5";  // resets VmHWM to the current RSS
  }
  const int64_t before = status_bytes("VmRSS");
  opt.step();
  const int64_t peak = status_bytes("VmHWM");
  const int64_t n = numel_of(params);
  std::printf(
      "{\"impl\":\"cpp\",\"param_bytes\":%lld,\"state_bytes\":%lld,\"added\":%lld}\n",
      static_cast<long long>(4 * n), static_cast<long long>(state_bytes(opt)),
      static_cast<long long>(std::max<int64_t>(0, peak - before)));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "rows" && argc == 2) return run_rows();
    if (mode == "peak" && argc == 3) return run_peak(argv[2]);
    std::cerr << "usage: bench_step rows < commands | bench_step peak SPEC\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "bench_step: " << e.what() << "\n";
    return 1;
  }
}
