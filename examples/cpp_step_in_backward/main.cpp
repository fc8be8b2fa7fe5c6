// The step inside backward: one small model trained twice, once with the
// usual backward + step() and once with the step running inside backward
// (tcltorch::Adafactor::set_step_in_backward), for float32, float64 and
// bfloat16 parameters, with and without gradient accumulation. The second
// run also saves its optimizer halfway and resumes in a new one. The
// parameters must come out the same, bit for bit. Then what happens to the
// gradients, to an error inside a step, and after the optimizer is gone.
#include <tcltorch/adafactor.h>
#include <tcltorch/checkpoint.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

namespace {

constexpr int kSteps = 12;

// A weight used twice (h = tanh(W x); h = tanh(W h)), a bias, and an output
// layer: factored (2-D) and unfactored (1-D) parameters.
struct Model {
  torch::Tensor w, b, out;
  explicit Model(torch::Dtype dtype) {
    torch::manual_seed(1);
    w = (torch::randn({8, 8}) * 0.3).to(dtype).requires_grad_();
    b = torch::zeros({8}, dtype).requires_grad_();
    out = (torch::randn({1, 8}) * 0.3).to(dtype).requires_grad_();
  }
  torch::Tensor loss(int batch) const {
    torch::manual_seed(100 + batch);
    auto x = torch::randn({16, 8}).to(w.scalar_type());
    auto y = torch::randn({16, 1}).to(w.scalar_type());
    auto h = torch::tanh(torch::matmul(x, w.t()) + b);
    h = torch::tanh(torch::matmul(h, w.t()) + b);
    return torch::mse_loss(torch::matmul(h, out.t()), y);
  }
  std::vector<torch::Tensor> params() const { return {w, b, out}; }
};

// Momentum and weight decay on the weights; the bias in a group of its own
// without weight decay.
std::unique_ptr<tcltorch::Adafactor> make_optimizer(const Model& m) {
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{m.w, m.out});
  groups.emplace_back(std::vector<torch::Tensor>{m.b},
                      std::make_unique<tcltorch::AdafactorOptions>(
                          tcltorch::AdafactorOptions(1e-2).beta1(0.9).weight_decay(0)));
  return std::make_unique<tcltorch::Adafactor>(
      groups, tcltorch::AdafactorOptions(1e-2).beta1(0.9).weight_decay(0.05));
}

// A schedule: the lr of every group falls linearly over the run.
void set_lr(tcltorch::Adafactor& opt, int step) {
  for (auto& g : opt.param_groups()) g.options().set_lr(1e-2 * (1.0 - 0.05 * step));
}

std::vector<torch::Tensor> train(torch::Dtype dtype, int accumulate, bool in_backward) {
  Model m(dtype);
  auto opt = make_optimizer(m);
  if (in_backward) opt->set_step_in_backward(true, accumulate);
  for (int step = 0; step < kSteps; ++step) {
    if (in_backward && step == kSteps / 2) {
      // Resume in a new optimizer: the file holds the state and the
      // options, not the setting, which the new optimizer is given again.
      tcltorch::save_optimizer(*opt, "step_in_backward_example.pt");
      opt.reset();  // removes its hooks
      opt = make_optimizer(m);
      tcltorch::load_optimizer(*opt, "step_in_backward_example.pt");
      opt->set_step_in_backward(true, accumulate);
      std::remove("step_in_backward_example.pt");
    }
    opt->zero_grad();  // harmless in backward: no gradient is left
    set_lr(*opt, step);
    for (int k = 0; k < accumulate; ++k) m.loss(step * accumulate + k).backward();
    opt->step();  // in backward: nothing left to do
  }
  for (const auto& p : m.params()) {
    if (in_backward && p.grad().defined()) throw std::runtime_error("a gradient was kept");
  }
  return m.params();
}

}  // namespace

int main() {
  bool all_same = true;
  for (auto [dtype, name] : {std::pair{torch::kFloat32, "float32"},
                             std::pair{torch::kFloat64, "float64"},
                             std::pair{torch::kBFloat16, "bfloat16"}}) {
    for (int accumulate : {1, 3}) {
      auto usual = train(dtype, accumulate, false);
      auto inside = train(dtype, accumulate, true);
      bool same = true;
      for (std::size_t i = 0; i < usual.size(); ++i) same &= torch::equal(usual[i], inside[i]);
      all_same &= same;
      std::cout << name << ", accumulate_steps " << accumulate << ": "
                << (same ? "the same bits" : "DIFFERENT") << "\n";
    }
  }

  Model m(torch::kFloat32);
  {
    auto opt = make_optimizer(m);
    opt->set_step_in_backward(true);
    // An error inside a step reaches the caller of backward.
    opt->param_groups()[0].options().set_lr(std::nan(""));
    try {
      m.loss(0).backward();
      all_same = false;
    } catch (const c10::ValueError& e) {
      std::cout << "an error inside backward: " << e.what_without_backtrace() << "\n";
    }
    // A tensor has one post-accumulate-grad hook: a second optimizer stepping
    // in backward is refused.
    try {
      make_optimizer(m)->set_step_in_backward(true);
      all_same = false;
    } catch (const c10::ValueError& e) {
      std::cout << "refused: " << e.what_without_backtrace() << "\n";
    }
    // A count of backward passes below one.
    try {
      opt->set_step_in_backward(true, 0);
      all_same = false;
    } catch (const c10::ValueError& e) {
      std::cout << "refused: " << e.what_without_backtrace() << "\n";
    }
  }
  // The optimizer is gone, and so are its hooks: backward only accumulates.
  for (const auto& p : m.params()) p.mutable_grad() = torch::Tensor();
  auto before = m.w.detach().clone();
  m.loss(1).backward();
  const bool left_alone = torch::equal(before, m.w) && m.w.grad().defined();
  std::cout << "after the optimizer is gone, backward "
            << (left_alone ? "only accumulates gradients" : "CHANGED THE PARAMETERS") << "\n";
  if (!all_same || !left_alone) return 1;
  std::cout << "step in backward: every run the same as the usual step\n";
}
