// Building blocks of transformers and CNNs: embedding, layer norm, 2-d
// convolution and max pooling, flatten, and a transformer encoder layer. Each
// is LibTorch's own module (the encoder layer is assembled from LibTorch's
// modules, see encoder_layer.h), so a network built from Tcl equals the same
// torch.nn network given the same weights.
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/modules/pooling.h>

#include <algorithm>

#include "argspec.h"
#include "commands.h"
#include "encoder_layer.h"
#include "errors.h"
#include "objects.h"
#include "tensor_util.h"

namespace tcltorch::tcl {
namespace {

// The dtypes a module's parameters may have (torch.nn's dtype= argument).
const char* const kParameterDtypes[] = {"float32", "float64", "float16", "bfloat16", nullptr};

ArgSpec dtype_arg() {
  return {.name = "dtype", .type = ArgType::String, .default_value = "float32",
          .placeholder = "dtype", .choices = kParameterDtypes, .positional = false};
}

// Registers `module` (converted to -dtype when the command has one).
template <class Holder>
int module_result(Registry& registry, Tcl_Interp* interp, const Args& args, std::string type,
                  Holder module, bool has_dtype = true) {
  if (has_dtype) module->to(dtype_from_name(args.str("dtype")));
  return ok(interp, registry.add(std::make_shared<ModuleEntry>(
                        ModuleEntry{std::move(type), torch::nn::AnyModule(module)})));
}

// An int, or a list of `n` ints, each >= `min`: a kernel size, a stride, a
// padding. One int stands for all `n`.
int get_ints(Tcl_Interp* interp, const char* option, Tcl_Obj* value, std::size_t n,
             std::int64_t min, std::vector<std::int64_t>& out) {
  const std::string requirement = "must be an integer >= " + std::to_string(min) +
                                  " or a list of " + std::to_string(n) + " of them";
  Tcl_Size count = 0;
  Tcl_Obj** items = nullptr;
  if (Tcl_ListObjGetElements(nullptr, value, &count, &items) != TCL_OK ||
      (count != 1 && static_cast<std::size_t>(count) != n)) {
    return bad_value(interp, option, value, requirement);
  }
  out.clear();
  for (Tcl_Size k = 0; k < count; ++k) {
    Tcl_WideInt v = 0;
    if (get_wide_int(items[k], v) != TCL_OK || v < min) {
      return bad_value(interp, option, value, requirement);
    }
    out.push_back(v);
  }
  if (out.size() == 1) out.resize(n, out[0]);
  return TCL_OK;
}

// ------------------------------------------------------------ embedding

const CommandSpec kEmbedding{"torch::embedding", {
    {.name = "numEmbeddings", .snake = "num_embeddings", .type = ArgType::Int,
     .required = true, .placeholder = "int", .rule = kPositiveInt},
    {.name = "embeddingDim", .snake = "embedding_dim", .type = ArgType::Int,
     .required = true, .placeholder = "int", .rule = kPositiveInt},
    dtype_arg(),
}};

int cmd_embedding(Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kEmbedding, objc, objv, args) != TCL_OK) return TCL_ERROR;
  torch::nn::Embedding module(args.integer("numEmbeddings"), args.integer("embeddingDim"));
  return module_result(registry, interp, args, "embedding", module);
}

// ------------------------------------------------------------ layer_norm

const CommandSpec kLayerNorm{"torch::layer_norm", {
    {.name = "normalizedShape", .snake = "normalized_shape", .required = true,
     .placeholder = "shape"},
    {.name = "eps", .type = ArgType::Double, .default_value = "1e-5", .rule = kPositive},
    {.name = "elementwiseAffine", .snake = "elementwise_affine", .type = ArgType::Bool,
     .default_value = "1", .placeholder = "bool", .positional = false},
    dtype_arg(),
}};

int cmd_layer_norm(Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kLayerNorm, objc, objv, args) != TCL_OK) return TCL_ERROR;
  std::vector<std::int64_t> shape;
  if (get_shape(interp, "normalizedShape", args.obj("normalizedShape"), shape) != TCL_OK) {
    return TCL_ERROR;
  }
  if (shape.empty() || std::find(shape.begin(), shape.end(), 0) != shape.end()) {
    return bad_value(interp, "normalizedShape", args.obj("normalizedShape"),
                     "must be a non-empty list of integers >= 1");
  }
  torch::nn::LayerNorm module(torch::nn::LayerNormOptions(shape)
                                  .eps(args.number("eps"))
                                  .elementwise_affine(args.flag("elementwiseAffine")));
  return module_result(registry, interp, args, "layer_norm", module);
}

// ------------------------------------------------------------ conv2d

const CommandSpec kConv2d{"torch::conv2d", {
    {.name = "inChannels", .snake = "in_channels", .type = ArgType::Int, .required = true,
     .placeholder = "int", .rule = kPositiveInt},
    {.name = "outChannels", .snake = "out_channels", .type = ArgType::Int, .required = true,
     .placeholder = "int", .rule = kPositiveInt},
    {.name = "kernelSize", .snake = "kernel_size", .required = true, .placeholder = "size"},
    {.name = "stride", .default_value = "1", .placeholder = "size"},
    {.name = "padding", .default_value = "0", .placeholder = "size"},
    {.name = "bias", .type = ArgType::Bool, .default_value = "1", .placeholder = "bool"},
    dtype_arg(),
}};

int cmd_conv2d(Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kConv2d, objc, objv, args) != TCL_OK) return TCL_ERROR;
  std::vector<std::int64_t> kernel, stride, padding;
  if (get_ints(interp, "kernelSize", args.obj("kernelSize"), 2, 1, kernel) != TCL_OK ||
      get_ints(interp, "stride", args.obj("stride"), 2, 1, stride) != TCL_OK ||
      get_ints(interp, "padding", args.obj("padding"), 2, 0, padding) != TCL_OK) {
    return TCL_ERROR;
  }
  torch::nn::Conv2d module(
      torch::nn::Conv2dOptions(args.integer("inChannels"), args.integer("outChannels"),
                               torch::ExpandingArray<2>(kernel))
          .stride(torch::ExpandingArray<2>(stride))
          .padding(torch::ExpandingArray<2>(padding))
          .bias(args.flag("bias")));
  return module_result(registry, interp, args, "conv2d", module);
}

// ------------------------------------------------------------ max_pool2d

const CommandSpec kMaxPool2d{"torch::max_pool2d", {
    {.name = "kernelSize", .snake = "kernel_size", .required = true, .placeholder = "size"},
    {.name = "stride", .placeholder = "size"},
}};

int cmd_max_pool2d(Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kMaxPool2d, objc, objv, args) != TCL_OK) return TCL_ERROR;
  std::vector<std::int64_t> kernel, stride;
  if (get_ints(interp, "kernelSize", args.obj("kernelSize"), 2, 1, kernel) != TCL_OK) {
    return TCL_ERROR;
  }
  // As torch.nn.MaxPool2d: the stride defaults to the kernel size.
  stride = kernel;
  if (args.has("stride") &&
      get_ints(interp, "stride", args.obj("stride"), 2, 1, stride) != TCL_OK) {
    return TCL_ERROR;
  }
  torch::nn::MaxPool2d module(torch::nn::MaxPool2dOptions(torch::ExpandingArray<2>(kernel))
                                  .stride(torch::ExpandingArray<2>(stride)));
  return module_result(registry, interp, args, "max_pool2d", module, /*has_dtype=*/false);
}

// ------------------------------------------------------------ flatten

const CommandSpec kFlatten{"torch::flatten", {
    {.name = "startDim", .snake = "start_dim", .type = ArgType::Int, .default_value = "1",
     .placeholder = "dim"},
    {.name = "endDim", .snake = "end_dim", .type = ArgType::Int, .default_value = "-1",
     .placeholder = "dim"},
}};

int cmd_flatten(Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kFlatten, objc, objv, args) != TCL_OK) return TCL_ERROR;
  torch::nn::Flatten module(torch::nn::FlattenOptions()
                                .start_dim(args.integer("startDim"))
                                .end_dim(args.integer("endDim")));
  return module_result(registry, interp, args, "flatten", module, /*has_dtype=*/false);
}

// ------------------------------------------------------------ transformer_encoder_layer

const char* const kActivations[] = {"relu", "gelu", nullptr};

const CommandSpec kEncoderLayer{"torch::transformer_encoder_layer", {
    {.name = "dModel", .snake = "d_model", .type = ArgType::Int, .required = true,
     .placeholder = "int", .rule = kPositiveInt},
    {.name = "nHead", .snake = "n_head", .type = ArgType::Int, .required = true,
     .placeholder = "int", .rule = kPositiveInt},
    {.name = "dimFeedforward", .snake = "dim_feedforward", .type = ArgType::Int,
     .default_value = "2048", .placeholder = "int", .rule = kPositiveInt},
    {.name = "dropout", .type = ArgType::Double, .default_value = "0.1", .rule = kUnitInterval},
    {.name = "activation", .type = ArgType::String, .default_value = "relu",
     .placeholder = "activation", .choices = kActivations},
    {.name = "normFirst", .snake = "norm_first", .type = ArgType::Bool, .default_value = "0",
     .placeholder = "bool"},
    {.name = "causal", .type = ArgType::Bool, .default_value = "0", .placeholder = "bool"},
    {.name = "layerNormEps", .snake = "layer_norm_eps", .type = ArgType::Double,
     .default_value = "1e-5", .rule = kPositive, .positional = false},
    dtype_arg(),
}};

int cmd_transformer_encoder_layer(Registry& registry, Tcl_Interp* interp, int objc,
                                  Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kEncoderLayer, objc, objv, args) != TCL_OK) return TCL_ERROR;
  EncoderLayerOptions o;
  o.d_model = args.integer("dModel");
  o.n_head = args.integer("nHead");
  if (o.d_model % o.n_head != 0) {
    return bad_value(interp, "nHead", args.obj("nHead"),
                     "must divide -dModel (" + std::to_string(o.d_model) + ")");
  }
  o.dim_feedforward = args.integer("dimFeedforward");
  o.dropout = args.number("dropout");
  o.gelu = args.str("activation") == "gelu";
  o.norm_first = args.flag("normFirst");
  o.causal = args.flag("causal");
  o.layer_norm_eps = args.number("layerNormEps");
  return module_result(registry, interp, args, "transformer_encoder_layer", EncoderLayer(o));
}

}  // namespace

const std::vector<CommandDef>& nn_commands() {
  static const std::vector<CommandDef> table = {
      {"torch::embedding", cmd_embedding},
      {"torch::layer_norm", cmd_layer_norm},
      {"torch::conv2d", cmd_conv2d},
      {"torch::max_pool2d", cmd_max_pool2d},
      {"torch::flatten", cmd_flatten},
      {"torch::transformer_encoder_layer", cmd_transformer_encoder_layer},
  };
  return table;
}

}  // namespace tcltorch::tcl
