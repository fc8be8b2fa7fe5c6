// The digits example on N ranks with tcltorch::distributed: a process group
// from torchrun's environment, data parallel gradient averaging, and the
// sharded Adafactor. Every rank makes the same 80/20 split and takes an equal
// share of each global batch.
//
//   torchrun --nproc-per-node 2 --no-python ./train_digits_ddp examples/data/digits.txt ?epochs?
//
// Prints the test accuracy (rank 0); exits non-zero below 90%.
#include <tcltorch/distributed.h>
#include <tcltorch/sharded_adafactor.h>
#include <torch/nn/functional/loss.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace dist = tcltorch::distributed;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s digits.txt ?epochs?\n", argv[0]);
    return 2;
  }
  const int epochs = argc > 2 ? std::stoi(argv[2]) : 5;
  const std::int64_t batch = 32;
  try {
    auto group = dist::ProcessGroup::create({});  // RANK, WORLD_SIZE, ... from torchrun
    const int rank = group->rank(), world = group->world_size();

    // Each line: label, then 64 pixels in 0..16.
    std::vector<float> pixels;
    std::vector<std::int64_t> labels;
    std::ifstream in(argv[1]);
    for (std::string line; std::getline(in, line);) {
      if (line.empty() || line[0] == '#') continue;
      std::istringstream fields(line);
      std::int64_t label;
      fields >> label;
      labels.push_back(label);
      for (float v; fields >> v;) pixels.push_back(v / 16.0f);
    }
    const auto n = static_cast<std::int64_t>(labels.size());
    auto X = torch::from_blob(pixels.data(), {n, 64}).clone();
    auto y = torch::from_blob(labels.data(), {n}, torch::kLong).clone();
    torch::manual_seed(0);
    auto order = torch::randperm(n);
    const std::int64_t ntest = n / 5, ntrain = n - ntest;
    auto Xtrain = X.index_select(0, order.slice(0, 0, ntrain));
    auto ytrain = y.index_select(0, order.slice(0, 0, ntrain));
    auto Xtest = X.index_select(0, order.slice(0, ntrain));
    auto ytest = y.index_select(0, order.slice(0, ntrain));

    torch::manual_seed(1 + rank);  // different weights: rank 0's are broadcast
    torch::nn::Sequential model(torch::nn::Linear(64, 256), torch::nn::ReLU(),
                                torch::nn::Linear(256, 10));
    dist::DataParallel ddp(group, model->parameters(), model->buffers());
    // The Tcl command's defaults: the paper's algorithm, relative step capped at 0.8.
    const auto options =
        tcltorch::AdafactorOptions(0.8).variant(tcltorch::AdafactorVariant::Transformers).eps1(1e-30);
    dist::ShardedAdafactor optimizer(group, model->parameters(), options);

    double accuracy = 0;
    for (int epoch = 1; epoch <= epochs; ++epoch) {
      torch::manual_seed(1000 + epoch);  // the same shuffle on every rank
      auto perm = torch::randperm(ntrain);
      auto Xs = Xtrain.index_select(0, perm), ys = ytrain.index_select(0, perm);
      for (std::int64_t i = 0; i < ntrain; i += batch) {
        const std::int64_t share = std::min(batch, ntrain - i) / world;
        if (share == 0) break;
        const std::int64_t start = i + rank * share;
        optimizer.zero_grad();
        auto loss = torch::nn::functional::cross_entropy(
            model->forward(Xs.slice(0, start, start + share)), ys.slice(0, start, start + share));
        loss.backward();  // ends with the gradients averaged over the ranks
        optimizer.step();
      }
      torch::NoGradGuard no_grad;
      model->eval();
      accuracy = model->forward(Xtest).argmax(1).eq(ytest).to(torch::kDouble).mean().item<double>();
      model->train();
      if (rank == 0) std::printf("epoch %d/%d  test accuracy %.2f%%\n", epoch, epochs, 100 * accuracy);
    }
    std::printf("rank %d: optimizer state %lld bytes\n", rank,
                static_cast<long long>(optimizer.local_state_bytes()));
    group->barrier();
    if (rank == 0) std::printf("final test accuracy: %.2f%%\n", 100 * accuracy);
    group->destroy();
    return accuracy >= 0.9 ? 0 : 1;
  } catch (const dist::Error& e) {
    std::fprintf(stderr, "distributed error (%s): %s\n", e.code().c_str(), e.what());
    return 1;
  }
}
