// What training loops of real models need beyond the module commands:
// parameters by name, gradient clipping, softmax and sampling, joining
// tensors, random integers, and integer tensors made from Tcl strings and lists
// in one pass of C (a million tokens must not cost a million Tcl commands).
#include <ATen/ATen.h>
#include <torch/nn/utils/clip_grad.h>

#include <unordered_set>

#include "argspec.h"
#include "commands.h"
#include "errors.h"
#include "objects.h"
#include "tensor_util.h"

namespace tcltorch::tcl {
namespace {

Tcl_Obj* handle_obj(const std::string& h) {
  return Tcl_NewStringObj(h.data(), static_cast<Tcl_Size>(h.size()));
}

// ------------------------------------------------------------ named_parameters

const CommandSpec kNamedParameters{"torch::named_parameters", {
    {.name = "module", .required = true, .placeholder = "module"},
}};

// As torch.nn's named_parameters(): dotted names ("0.weight",
// "self_attn.out_proj.bias"), each tensor once, under its first name.
int cmd_named_parameters(Registry& registry, Tcl_Interp* interp, int objc,
                         Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kNamedParameters, objc, objv, args) != TCL_OK) return TCL_ERROR;
  std::shared_ptr<ModuleEntry> module;
  if (!registry.get(interp, args.obj("module"), module)) return TCL_ERROR;
  Tcl_Obj* dict = Tcl_NewDictObj();
  std::unordered_set<const void*> seen;
  for (const auto& p : module->module.ptr()->named_parameters()) {
    if (!seen.insert(p.value().unsafeGetTensorImpl()).second) continue;
    Tcl_DictObjPut(nullptr, dict, handle_obj(p.key()), handle_obj(registry.add(p.value())));
  }
  Tcl_SetObjResult(interp, dict);
  return TCL_OK;
}

// ------------------------------------------------------------ clip_grad_norm

// A module handle, a tensor handle, or a list of them: their parameters, once
// each.
int collect_tensors(Registry& registry, Tcl_Interp* interp, const char* option,
                    Tcl_Obj* value, std::vector<at::Tensor>& out) {
  Tcl_Size n = 0;
  Tcl_Obj** items = nullptr;
  if (Tcl_ListObjGetElements(nullptr, value, &n, &items) != TCL_OK) {
    return bad_value(interp, option, value,
                     "must be a module handle, a tensor handle or a list of them");
  }
  std::unordered_set<const void*> seen;
  auto take = [&](const at::Tensor& t) {
    if (seen.insert(t.unsafeGetTensorImpl()).second) out.push_back(t);
  };
  for (Tcl_Size k = 0; k < n; ++k) {
    const Kind* kind = registry.kind_of(Tcl_GetString(items[k]));
    if (kind && *kind == Kind::Module) {
      std::shared_ptr<ModuleEntry> module;
      registry.get(interp, items[k], module);
      for (const auto& p : module->module.ptr()->parameters()) take(p);
    } else {
      at::Tensor t;
      if (!registry.get(interp, items[k], t)) return TCL_ERROR;
      take(t);
    }
  }
  return TCL_OK;
}

const CommandSpec kClipGradNorm{"torch::clip_grad_norm", {
    {.name = "parameters", .required = true, .placeholder = "moduleOrTensors"},
    {.name = "maxNorm", .snake = "max_norm", .type = ArgType::Double, .required = true,
     .rule = kNonNegative},
    {.name = "normType", .snake = "norm_type", .type = ArgType::Double, .default_value = "2",
     .rule = kPositive},
}};

// torch.nn.utils.clip_grad_norm_: scales the gradients in place so that their
// joint norm is at most maxNorm; returns the norm they had.
int cmd_clip_grad_norm(Registry& registry, Tcl_Interp* interp, int objc,
                       Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kClipGradNorm, objc, objv, args) != TCL_OK) return TCL_ERROR;
  std::vector<at::Tensor> params;
  if (collect_tensors(registry, interp, "parameters", args.obj("parameters"), params) !=
      TCL_OK) {
    return TCL_ERROR;
  }
  const double norm = torch::nn::utils::clip_grad_norm_(params, args.number("maxNorm"),
                                                        args.number("normType"));
  Tcl_SetObjResult(interp, Tcl_NewDoubleObj(norm));
  return TCL_OK;
}

// ------------------------------------------------------------ softmax, multinomial

const CommandSpec kSoftmax{"torch::softmax", {
    {.name = "input", .required = true, .placeholder = "tensor"},
    {.name = "dim", .type = ArgType::Int, .required = true, .placeholder = "dim"},
}};

int cmd_softmax(Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kSoftmax, objc, objv, args) != TCL_OK) return TCL_ERROR;
  at::Tensor t;
  if (!registry.get(interp, args.obj("input"), t)) return TCL_ERROR;
  return tensor_result(registry, interp, at::softmax(t, args.integer("dim")));
}

const CommandSpec kMultinomial{"torch::multinomial", {
    {.name = "input", .required = true, .placeholder = "probs"},
    {.name = "numSamples", .snake = "num_samples", .type = ArgType::Int, .required = true,
     .placeholder = "int", .rule = kPositiveInt},
    {.name = "replacement", .type = ArgType::Bool, .default_value = "0", .placeholder = "bool"},
}};

// Indices drawn from the rows of `input` (weights, not necessarily
// normalised) with LibTorch's global generator, as torch.multinomial.
int cmd_multinomial(Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kMultinomial, objc, objv, args) != TCL_OK) return TCL_ERROR;
  at::Tensor t;
  if (!registry.get(interp, args.obj("input"), t)) return TCL_ERROR;
  return tensor_result(registry, interp,
                       at::multinomial(t, args.integer("numSamples"), args.flag("replacement")));
}

// ------------------------------------------------------------ cat, randint

const CommandSpec kCat{"torch::cat", {
    {.name = "tensors", .required = true, .placeholder = "tensorList"},
    {.name = "dim", .type = ArgType::Int, .default_value = "0", .placeholder = "dim"},
}};

int cmd_cat(Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kCat, objc, objv, args) != TCL_OK) return TCL_ERROR;
  Tcl_Size n = 0;
  Tcl_Obj** items = nullptr;
  if (Tcl_ListObjGetElements(nullptr, args.obj("tensors"), &n, &items) != TCL_OK || n == 0) {
    return bad_value(interp, "tensors", args.obj("tensors"),
                     "must be a non-empty list of tensor handles");
  }
  std::vector<at::Tensor> tensors(static_cast<std::size_t>(n));
  for (Tcl_Size k = 0; k < n; ++k) {
    if (!registry.get(interp, items[k], tensors[k])) return TCL_ERROR;
  }
  return tensor_result(registry, interp, at::cat(tensors, args.integer("dim")));
}

const char* const kIntegerDtypes[] = {"int64", "int32", "int16", "int8", "uint8", nullptr};

const CommandSpec kRandint{"torch::randint", {
    {.name = "low", .type = ArgType::Int, .required = true, .placeholder = "int"},
    {.name = "high", .type = ArgType::Int, .required = true, .placeholder = "int"},
    {.name = "shape", .required = true, .placeholder = "shape"},
    {.name = "dtype", .type = ArgType::String, .default_value = "int64", .placeholder = "dtype",
     .choices = kIntegerDtypes},
}};

// Uniform integers in [low, high) from LibTorch's global generator, as
// torch.randint(low, high, shape).
int cmd_randint(Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kRandint, objc, objv, args) != TCL_OK) return TCL_ERROR;
  if (args.integer("high") <= args.integer("low")) {
    return bad_value(interp, "high", args.obj("high"),
                     "must be greater than -low (" + std::to_string(args.integer("low")) + ")");
  }
  std::vector<std::int64_t> shape;
  if (get_shape(interp, "shape", args.obj("shape"), shape) != TCL_OK) return TCL_ERROR;
  return tensor_result(registry, interp,
                       at::randint(args.integer("low"), args.integer("high"), shape,
                                   at::TensorOptions().dtype(dtype_from_name(args.str("dtype")))));
}

// ------------------------------------------------------------ tokens

const char* const kUnits[] = {"char", "byte", nullptr};

const CommandSpec kStringToTensor{"torch::string_to_tensor", {
    {.name = "string", .type = ArgType::Object, .required = true, .placeholder = "string"},
    {.name = "unit", .type = ArgType::String, .default_value = "char", .placeholder = "unit",
     .choices = kUnits},
}};

// One int64 per character (its code, as `scan %c` reads it), or per byte of
// the string's UTF-8 form.
int cmd_string_to_tensor(Registry& registry, Tcl_Interp* interp, int objc,
                         Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kStringToTensor, objc, objv, args) != TCL_OK) return TCL_ERROR;
  Tcl_Obj* s = args.obj("string");
  at::Tensor out;
  if (args.str("unit") == "char") {
    Tcl_Size n = 0;
    const Tcl_UniChar* chars = Tcl_GetUnicodeFromObj(s, &n);
    out = at::empty({static_cast<std::int64_t>(n)}, at::kLong);
    auto* p = out.data_ptr<std::int64_t>();
    for (Tcl_Size k = 0; k < n; ++k) p[k] = static_cast<std::int64_t>(chars[k]);
  } else {
    Tcl_Encoding utf8 = Tcl_GetEncoding(nullptr, "utf-8");
    Tcl_DString bytes;
    Tcl_Size len = 0;
    const char* text = Tcl_GetStringFromObj(s, &len);
    Tcl_UtfToExternalDString(utf8, text, len, &bytes);
    Tcl_FreeEncoding(utf8);
    const auto* b = reinterpret_cast<const unsigned char*>(Tcl_DStringValue(&bytes));
    const auto n = static_cast<std::int64_t>(Tcl_DStringLength(&bytes));
    out = at::empty({n}, at::kLong);
    auto* p = out.data_ptr<std::int64_t>();
    for (std::int64_t k = 0; k < n; ++k) p[k] = b[k];
    Tcl_DStringFree(&bytes);
  }
  return tensor_result(registry, interp, std::move(out));
}

const CommandSpec kTensorToString{"torch::tensor_to_string", {
    {.name = "tensor", .required = true, .placeholder = "tensor"},
    {.name = "unit", .type = ArgType::String, .default_value = "char", .placeholder = "unit",
     .choices = kUnits},
}};

// The inverse of torch::string_to_tensor: the values of an integer tensor
// (in order, any shape) as character codes, or as UTF-8 bytes.
int cmd_tensor_to_string(Registry& registry, Tcl_Interp* interp, int objc,
                         Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kTensorToString, objc, objv, args) != TCL_OK) return TCL_ERROR;
  at::Tensor t;
  if (!registry.get(interp, args.obj("tensor"), t)) return TCL_ERROR;
  if (t.is_floating_point() || t.is_complex() || t.scalar_type() == at::kBool) {
    return bad_value(interp, "tensor", args.obj("tensor"), "must be an integer tensor");
  }
  const bool chars = args.str("unit") == "char";
  const std::int64_t max = chars ? (sizeof(Tcl_UniChar) == 2 ? 0xFFFF : 0x10FFFF) : 0xFF;
  auto codes = t.reshape({-1}).to(at::kLong).contiguous();
  const auto n = codes.numel();
  const auto* p = codes.data_ptr<std::int64_t>();
  for (std::int64_t k = 0; k < n; ++k) {
    if (p[k] < 0 || p[k] > max) {
      return bad_value(interp, "tensor", args.obj("tensor"),
                       "holds " + std::to_string(p[k]) + ", which is not a " +
                           (chars ? "character code" : "byte") + " (0 to " +
                           std::to_string(max) + ")");
    }
  }
  if (chars) {
    std::vector<Tcl_UniChar> text(static_cast<std::size_t>(n));
    for (std::int64_t k = 0; k < n; ++k) text[k] = static_cast<Tcl_UniChar>(p[k]);
    Tcl_SetObjResult(interp, Tcl_NewUnicodeObj(text.data(), static_cast<Tcl_Size>(n)));
    return TCL_OK;
  }
  std::string bytes(static_cast<std::size_t>(n), '\0');
  for (std::int64_t k = 0; k < n; ++k) bytes[k] = static_cast<char>(p[k]);
  Tcl_Encoding utf8 = Tcl_GetEncoding(nullptr, "utf-8");
  Tcl_DString text;
  Tcl_ExternalToUtfDString(utf8, bytes.data(), static_cast<Tcl_Size>(n), &text);
  Tcl_FreeEncoding(utf8);
  Tcl_SetObjResult(interp, Tcl_NewStringObj(Tcl_DStringValue(&text), Tcl_DStringLength(&text)));
  Tcl_DStringFree(&text);
  return TCL_OK;
}

const char* const kListDtypes[] = {"int64", "int32", "int16", "int8", "uint8",
                                   "float32", "float64", nullptr};

const CommandSpec kListToTensor{"torch::list_to_tensor", {
    {.name = "list", .required = true, .placeholder = "list"},
    {.name = "dtype", .type = ArgType::String, .default_value = "int64", .placeholder = "dtype",
     .choices = kListDtypes},
}};

// A flat Tcl list straight into a 1-d tensor: one pass over the list's
// elements, written into the tensor's memory.
int cmd_list_to_tensor(Registry& registry, Tcl_Interp* interp, int objc,
                       Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kListToTensor, objc, objv, args) != TCL_OK) return TCL_ERROR;
  Tcl_Size n = 0;
  Tcl_Obj** items = nullptr;
  if (Tcl_ListObjGetElements(nullptr, args.obj("list"), &n, &items) != TCL_OK) {
    return bad_value(interp, "list", args.obj("list"), "must be a list of numbers");
  }
  const auto dtype = dtype_from_name(args.str("dtype"));
  at::Tensor out;
  if (at::isFloatingType(dtype)) {
    out = at::empty({static_cast<std::int64_t>(n)}, at::kDouble);
    auto* p = out.data_ptr<double>();
    for (Tcl_Size k = 0; k < n; ++k) {
      if (Tcl_GetDoubleFromObj(nullptr, items[k], &p[k]) != TCL_OK) {
        return bad_value(interp, "list", items[k], "must be a list of numbers");
      }
    }
  } else {
    std::int64_t lo = INT64_MIN, hi = INT64_MAX;
    switch (dtype) {
      case at::kInt: lo = INT32_MIN; hi = INT32_MAX; break;
      case at::kShort: lo = INT16_MIN; hi = INT16_MAX; break;
      case at::kChar: lo = INT8_MIN; hi = INT8_MAX; break;
      case at::kByte: lo = 0; hi = UINT8_MAX; break;
      default: break;
    }
    out = at::empty({static_cast<std::int64_t>(n)}, at::kLong);
    auto* p = out.data_ptr<std::int64_t>();
    for (Tcl_Size k = 0; k < n; ++k) {
      Tcl_WideInt v = 0;
      if (get_wide_int(items[k], v) != TCL_OK) {
        return bad_value(interp, "list", items[k], "must be a list of integers");
      }
      if (v < lo || v > hi) {
        return bad_value(interp, "list", items[k],
                         "must be integers in [" + std::to_string(lo) + ", " +
                             std::to_string(hi) + "] for " + args.str("dtype"));
      }
      p[k] = v;
    }
  }
  return tensor_result(registry, interp, out.to(dtype));
}

}  // namespace

const std::vector<CommandDef>& training_commands() {
  static const std::vector<CommandDef> table = {
      {"torch::named_parameters", cmd_named_parameters},
      {"torch::clip_grad_norm", cmd_clip_grad_norm},
      {"torch::softmax", cmd_softmax},
      {"torch::multinomial", cmd_multinomial},
      {"torch::cat", cmd_cat},
      {"torch::randint", cmd_randint},
      {"torch::string_to_tensor", cmd_string_to_tensor},
      {"torch::tensor_to_string", cmd_tensor_to_string},
      {"torch::list_to_tensor", cmd_list_to_tensor},
  };
  return table;
}

}  // namespace tcltorch::tcl
