// Tensor arithmetic a training script needs: elementwise operations,
// matrix product, reductions, comparisons, slicing and shuffling.
#include <ATen/ATen.h>

#include "argspec.h"
#include "commands.h"
#include "errors.h"
#include "tensor_util.h"

namespace tcltorch::tcl {
namespace {

// The second operand of an elementwise command: a tensor handle or a number.
struct Operand {
  at::Tensor tensor;
  at::Scalar number;  // an integer stays an integer, as in Python
  bool is_tensor = false;
};

// An integer-valued number as an integer Scalar, so that integer tensors
// keep their dtype (torch.tensor([1]) + 1 is int64).
at::Scalar scalar_of(Tcl_Obj* value, double number) {
  Tcl_WideInt w = 0;
  if (get_wide_int(value, w) == TCL_OK) return at::Scalar(static_cast<int64_t>(w));
  return at::Scalar(number);
}

int get_operand(Registry& registry, Tcl_Interp* interp, const char* option,
                Tcl_Obj* value, Operand& out) {
  const Kind* kind = registry.kind_of(Tcl_GetString(value));
  if (kind && *kind == Kind::Tensor) {
    out.is_tensor = registry.get(interp, value, out.tensor);
    return out.is_tensor ? TCL_OK : TCL_ERROR;
  }
  double number = 0;
  if (Tcl_GetDoubleFromObj(nullptr, value, &number) == TCL_OK) {
    out.number = scalar_of(value, number);
    return TCL_OK;
  }
  return bad_value(interp, option, value, "must be a tensor handle or a number");
}

CommandSpec binary_spec(const char* name, bool with_alpha) {
  CommandSpec spec{name, {
      {.name = "input", .required = true, .placeholder = "tensor"},
      {.name = "other", .required = true, .placeholder = "tensorOrNumber"},
  }};
  if (with_alpha) {
    spec.args.push_back({.name = "alpha", .type = ArgType::Double, .default_value = "1"});
  }
  return spec;
}
const CommandSpec kAdd = binary_spec("torch::add", true);
const CommandSpec kSub = binary_spec("torch::sub", true);
const CommandSpec kMul = binary_spec("torch::mul", false);
const CommandSpec kDiv = binary_spec("torch::div", false);
const CommandSpec kEq = binary_spec("torch::eq", false);
const CommandSpec kMatmul{"torch::matmul", {
    {.name = "input", .required = true, .placeholder = "tensor"},
    {.name = "other", .required = true, .placeholder = "tensor"},
}};

enum class Op { Add, Sub, Mul, Div, Eq };

int binary(const CommandSpec& spec, Op op, Registry& registry, Tcl_Interp* interp,
           int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, spec, objc, objv, args) != TCL_OK) return TCL_ERROR;
  at::Tensor a;
  Operand b;
  if (!registry.get(interp, args.obj("input"), a) ||
      get_operand(registry, interp, "other", args.obj("other"), b) != TCL_OK) {
    return TCL_ERROR;
  }
  const bool with_alpha = op == Op::Add || op == Op::Sub;
  const at::Scalar alpha =
      with_alpha ? scalar_of(args.obj("alpha"), args.number("alpha")) : at::Scalar(1);
  at::Tensor out;
  switch (op) {
    case Op::Add:
      out = b.is_tensor ? at::add(a, b.tensor, alpha) : at::add(a, b.number, alpha);
      break;
    case Op::Sub:
      out = b.is_tensor ? at::sub(a, b.tensor, alpha) : at::sub(a, b.number, alpha);
      break;
    case Op::Mul:
      out = b.is_tensor ? at::mul(a, b.tensor) : at::mul(a, b.number);
      break;
    case Op::Div:
      out = b.is_tensor ? at::div(a, b.tensor) : at::div(a, b.number);
      break;
    case Op::Eq:
      out = b.is_tensor ? at::eq(a, b.tensor) : at::eq(a, b.number);
      break;
  }
  return tensor_result(registry, interp, std::move(out));
}

int cmd_add(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) { return binary(kAdd, Op::Add, r, i, c, v); }
int cmd_sub(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) { return binary(kSub, Op::Sub, r, i, c, v); }
int cmd_mul(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) { return binary(kMul, Op::Mul, r, i, c, v); }
int cmd_div(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) { return binary(kDiv, Op::Div, r, i, c, v); }
int cmd_eq(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) { return binary(kEq, Op::Eq, r, i, c, v); }

int cmd_matmul(Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kMatmul, objc, objv, args) != TCL_OK) return TCL_ERROR;
  at::Tensor a, b;
  if (!registry.get(interp, args.obj("input"), a) || !registry.get(interp, args.obj("other"), b)) {
    return TCL_ERROR;
  }
  return tensor_result(registry, interp, at::matmul(a, b));
}

// sum / mean / argmax: over everything, or along -dim.
CommandSpec reduction_spec(const char* name) {
  return {name, {
      {.name = "input", .required = true, .placeholder = "tensor"},
      {.name = "dim", .type = ArgType::Int, .placeholder = "dim"},
      {.name = "keepDim", .snake = "keep_dim", .type = ArgType::Bool,
       .default_value = "0", .placeholder = "bool"},
  }};
}
const CommandSpec kSum = reduction_spec("torch::sum");
const CommandSpec kMean = reduction_spec("torch::mean");
const CommandSpec kArgmax = reduction_spec("torch::argmax");

enum class Reduce { Sum, Mean, Argmax };

int reduce(const CommandSpec& spec, Reduce how, Registry& registry, Tcl_Interp* interp,
           int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, spec, objc, objv, args) != TCL_OK) return TCL_ERROR;
  at::Tensor t;
  if (!registry.get(interp, args.obj("input"), t)) return TCL_ERROR;
  const bool keep = args.flag("keepDim");
  at::Tensor out;
  if (args.has("dim")) {
    const std::int64_t d = args.integer("dim");
    out = how == Reduce::Sum    ? at::sum(t, {d}, keep)
          : how == Reduce::Mean ? at::mean(t, {d}, keep)
                                : at::argmax(t, d, keep);
  } else {
    out = how == Reduce::Sum    ? at::sum(t)
          : how == Reduce::Mean ? at::mean(t)
                                : at::argmax(t);
  }
  return tensor_result(registry, interp, std::move(out));
}

int cmd_sum(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) { return reduce(kSum, Reduce::Sum, r, i, c, v); }
int cmd_mean(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) { return reduce(kMean, Reduce::Mean, r, i, c, v); }
int cmd_argmax(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) { return reduce(kArgmax, Reduce::Argmax, r, i, c, v); }

const CommandSpec kSlice{"torch::tensor_slice", {
    {.name = "input", .required = true, .placeholder = "tensor"},
    {.name = "dim", .type = ArgType::Int, .required = true, .placeholder = "dim"},
    {.name = "start", .type = ArgType::Int, .required = true, .placeholder = "start"},
    {.name = "end", .type = ArgType::Int, .placeholder = "end"},
    {.name = "step", .type = ArgType::Int, .default_value = "1", .placeholder = "step",
     .rule = kPositiveInt},
}};

// Elements start .. end-1 along dim (negative indices count from the end),
// as Python's t[start:end:step]; a view sharing memory.
int cmd_tensor_slice(Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kSlice, objc, objv, args) != TCL_OK) return TCL_ERROR;
  at::Tensor t;
  if (!registry.get(interp, args.obj("input"), t)) return TCL_ERROR;
  std::optional<std::int64_t> end;
  if (args.has("end")) end = args.integer("end");
  return tensor_result(registry, interp,
                       t.slice(args.integer("dim"), args.integer("start"), end,
                               args.integer("step")));
}

const CommandSpec kIndexSelect{"torch::index_select", {
    {.name = "input", .required = true, .placeholder = "tensor"},
    {.name = "dim", .type = ArgType::Int, .required = true, .placeholder = "dim"},
    {.name = "index", .required = true, .placeholder = "indexTensor"},
}};

int cmd_index_select(Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kIndexSelect, objc, objv, args) != TCL_OK) return TCL_ERROR;
  at::Tensor t, index;
  if (!registry.get(interp, args.obj("input"), t) || !registry.get(interp, args.obj("index"), index)) {
    return TCL_ERROR;
  }
  return tensor_result(registry, interp, at::index_select(t, args.integer("dim"), index));
}

const CommandSpec kRandperm{"torch::randperm", {
    {.name = "n", .type = ArgType::Int, .required = true, .placeholder = "n", .rule = kNonNegative},
}};

int cmd_randperm(Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kRandperm, objc, objv, args) != TCL_OK) return TCL_ERROR;
  return tensor_result(registry, interp, at::randperm(args.integer("n"), at::kLong));
}

const CommandSpec kReshape{"torch::tensor_reshape", {
    {.name = "input", .required = true, .placeholder = "tensor"},
    {.name = "shape", .required = true, .placeholder = "shape"},
}};

// One dimension may be -1 (inferred), as in torch.reshape.
int cmd_tensor_reshape(Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kReshape, objc, objv, args) != TCL_OK) return TCL_ERROR;
  at::Tensor t;
  if (!registry.get(interp, args.obj("input"), t)) return TCL_ERROR;
  Tcl_Size n = 0;
  Tcl_Obj** items = nullptr;
  std::vector<std::int64_t> shape;
  if (Tcl_ListObjGetElements(nullptr, args.obj("shape"), &n, &items) == TCL_OK) {
    for (Tcl_Size k = 0; k < n; ++k) {
      Tcl_WideInt d = 0;
      if (get_wide_int(items[k], d) != TCL_OK || d < -1) {
        shape.clear();
        n = -1;
        break;
      }
      shape.push_back(d);
    }
  } else {
    n = -1;
  }
  if (n < 0) {
    return bad_value(interp, "shape", args.obj("shape"),
                     "must be a list of integers >= -1 (one -1: inferred)");
  }
  return tensor_result(registry, interp, t.reshape(shape));
}

const CommandSpec kTensorTo{"torch::tensor_to", {
    {.name = "input", .required = true, .placeholder = "tensor"},
    {.name = "dtype", .type = ArgType::String, .required = true, .placeholder = "dtype",
     .choices = kDtypeNames},
}};

int cmd_tensor_to(Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kTensorTo, objc, objv, args) != TCL_OK) return TCL_ERROR;
  at::Tensor t;
  if (!registry.get(interp, args.obj("input"), t)) return TCL_ERROR;
  return tensor_result(registry, interp, t.to(dtype_from_name(args.str("dtype"))));
}

}  // namespace

const std::vector<CommandDef>& math_commands() {
  static const std::vector<CommandDef> table = {
      {"torch::add", cmd_add},
      {"torch::sub", cmd_sub},
      {"torch::mul", cmd_mul},
      {"torch::div", cmd_div},
      {"torch::eq", cmd_eq},
      {"torch::matmul", cmd_matmul},
      {"torch::sum", cmd_sum},
      {"torch::mean", cmd_mean},
      {"torch::argmax", cmd_argmax},
      {"torch::tensor_slice", cmd_tensor_slice},
      {"torch::index_select", cmd_index_select},
      {"torch::randperm", cmd_randperm},
      {"torch::tensor_reshape", cmd_tensor_reshape},
      {"torch::tensor_to", cmd_tensor_to},
  };
  return table;
}

}  // namespace tcltorch::tcl
