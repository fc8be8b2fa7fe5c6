// A transformer encoder layer equal to torch.nn.TransformerEncoderLayer with
// batch_first=True, for the norm_first and activation it is given, with the
// same parameter names. LibTorch's C++ TransformerEncoderLayer has neither
// batch_first nor norm_first, so this one is assembled from LibTorch's
// MultiheadAttention, Linear, LayerNorm and Dropout the way torch.nn's
// Python class assembles them; the attention itself runs torch.nn's
// computation on the MultiheadAttention's parameters (see the .cpp).
//
// Heavy LibTorch includes: only command files include this.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

namespace tcltorch::tcl {

struct EncoderLayerOptions {
  std::int64_t d_model = 0;
  std::int64_t n_head = 1;
  std::int64_t dim_feedforward = 2048;
  double dropout = 0.1;
  bool gelu = false;        // activation: gelu (exact, erf) instead of relu
  bool norm_first = false;  // pre-norm: x + sa(norm1(x)), x + ff(norm2(x))
  bool causal = false;      // each position attends to itself and earlier ones
  double layer_norm_eps = 1e-5;
};

class EncoderLayerImpl : public torch::nn::Module {
 public:
  explicit EncoderLayerImpl(const EncoderLayerOptions& options);

  // (batch, sequence, dModel) -> the same shape; an unbatched
  // (sequence, dModel) input is taken as a batch of one, as in torch.nn.
  at::Tensor forward(const at::Tensor& src);

  const EncoderLayerOptions& options() const { return options_; }

 private:
  at::Tensor self_attention_block(const at::Tensor& x);
  at::Tensor feed_forward_block(const at::Tensor& x);

  EncoderLayerOptions options_;
  // Registered in torch.nn's order, under its names.
  torch::nn::MultiheadAttention self_attn{nullptr};
  torch::nn::Linear linear1{nullptr};
  torch::nn::Dropout dropout{nullptr};
  torch::nn::Linear linear2{nullptr};
  torch::nn::LayerNorm norm1{nullptr};
  torch::nn::LayerNorm norm2{nullptr};
  torch::nn::Dropout dropout1{nullptr};
  torch::nn::Dropout dropout2{nullptr};
};
TORCH_MODULE(EncoderLayer);

}  // namespace tcltorch::tcl
