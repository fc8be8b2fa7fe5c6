// Trains a small MLP on a fixed synthetic regression task with
// tcltorch::Adafactor, checkpoints the optimizer halfway and resumes from the
// checkpoint. Prints the loss; exits non-zero if training did not reduce it.
#include <tcltorch/adafactor.h>
#include <tcltorch/checkpoint.h>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <memory>

int main() {
  torch::manual_seed(0);
  auto x = torch::randn({128, 16});
  auto w_true = torch::randn({16, 4});
  auto y = torch::tanh(x.matmul(w_true));

  torch::nn::Sequential model(torch::nn::Linear(16, 32), torch::nn::ReLU(),
                              torch::nn::Linear(32, 4));
  const auto options = tcltorch::AdafactorOptions(0.05).beta1(0.9);
  auto optimizer = std::make_unique<tcltorch::Adafactor>(model->parameters(), options);

  const auto checkpoint = std::filesystem::temp_directory_path() / "tcltorch_example.pt";
  float first = 0, last = 0;
  for (int step = 1; step <= 60; ++step) {
    optimizer->zero_grad();
    auto loss = torch::mse_loss(model->forward(x), y);
    loss.backward();
    optimizer->step();
    last = loss.item<float>();
    if (step == 1) first = last;
    if (step % 10 == 0) std::printf("step %2d  loss %.5f\n", step, last);
    if (step == 30) {
      // Resume halfway through from a checkpoint, in a new optimizer.
      tcltorch::save_optimizer(*optimizer, checkpoint.string());  // atomic
      optimizer = std::make_unique<tcltorch::Adafactor>(model->parameters(), options);
      tcltorch::load_optimizer(*optimizer, checkpoint.string());  // checked first
    }
  }
  std::filesystem::remove(checkpoint);
  std::printf("first loss %.5f, last loss %.5f\n", first, last);
  return last < 0.5f * first ? 0 : 1;
}
