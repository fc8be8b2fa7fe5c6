#include "encoder_layer.h"

#include <ATen/ATen.h>

#include <sstream>

namespace tcltorch::tcl {

namespace nn = torch::nn;

EncoderLayerImpl::EncoderLayerImpl(const EncoderLayerOptions& o) : options_(o) {
  self_attn = register_module(
      "self_attn",
      nn::MultiheadAttention(nn::MultiheadAttentionOptions(o.d_model, o.n_head).dropout(o.dropout)));
  linear1 = register_module("linear1", nn::Linear(o.d_model, o.dim_feedforward));
  dropout = register_module("dropout", nn::Dropout(o.dropout));
  linear2 = register_module("linear2", nn::Linear(o.dim_feedforward, o.d_model));
  norm1 = register_module(
      "norm1", nn::LayerNorm(nn::LayerNormOptions({o.d_model}).eps(o.layer_norm_eps)));
  norm2 = register_module(
      "norm2", nn::LayerNorm(nn::LayerNormOptions({o.d_model}).eps(o.layer_norm_eps)));
  dropout1 = register_module("dropout1", nn::Dropout(o.dropout));
  dropout2 = register_module("dropout2", nn::Dropout(o.dropout));
}

// torch.nn's multi_head_attention_forward for self-attention without
// attention weights (need_weights=False), step by step: the packed input
// projection, the heads, scaled_dot_product_attention (causal: its is_causal,
// as torch.nn passes it for a causal mask), the output projection. The same
// ATen calls in the same order as torch.nn makes them, so the same numbers;
// LibTorch's MultiheadAttention holds the parameters (its C++ forward always
// computes the weights, and masks by adding, which is slower).
at::Tensor EncoderLayerImpl::self_attention_block(const at::Tensor& x) {
  // sequence-first inside, as in torch.nn: (sequence, batch, dModel)
  const auto src = x.transpose(0, 1);
  const auto len = src.size(0);
  const auto batch = src.size(1);
  const auto e = options_.d_model;
  const auto heads = options_.n_head;
  const auto head_dim = e / heads;
  auto proj = at::linear(src, self_attn->in_proj_weight, self_attn->in_proj_bias);
  proj = proj.unflatten(-1, {3, e}).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous();
  auto split = [&](const at::Tensor& t) {
    return t.view({len, batch * heads, head_dim}).transpose(0, 1).view({batch, heads, len, head_dim});
  };
  const double p = is_training() ? options_.dropout : 0.0;
  auto out = at::scaled_dot_product_attention(split(proj[0]), split(proj[1]), split(proj[2]),
                                              /*attn_mask=*/{}, p, options_.causal);
  out = out.permute({2, 0, 1, 3}).reshape({batch * len, e});
  out = at::linear(out, self_attn->out_proj->weight, self_attn->out_proj->bias);
  out = out.view({len, batch, e});
  return dropout1->forward(out.transpose(0, 1));
}

at::Tensor EncoderLayerImpl::feed_forward_block(const at::Tensor& x) {
  auto h = linear1->forward(x);
  h = options_.gelu ? at::gelu(h) : at::relu(h);
  return dropout2->forward(linear2->forward(dropout->forward(h)));
}

at::Tensor EncoderLayerImpl::forward(const at::Tensor& src) {
  const bool unbatched = src.dim() == 2;
  if ((src.dim() != 2 && src.dim() != 3) || src.size(-1) != options_.d_model) {
    std::ostringstream msg;
    msg << "expected an input of shape (batch, sequence, " << options_.d_model
        << ") or (sequence, " << options_.d_model << "), got " << src.sizes();
    TORCH_CHECK_VALUE(false, msg.str());
  }
  auto x = unbatched ? src.unsqueeze(0) : src;
  if (options_.norm_first) {
    x = x + self_attention_block(norm1->forward(x));
    x = x + feed_forward_block(norm2->forward(x));
  } else {
    x = norm1->forward(x + self_attention_block(x));
    x = norm2->forward(x + feed_forward_block(x));
  }
  return unbatched ? x.squeeze(0) : x;
}

}  // namespace tcltorch::tcl
