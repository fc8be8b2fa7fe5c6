// Tensor commands: creation, inspection, autograd, handles.
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <cstdint>
#include <cstring>
#include <utility>
#include <sstream>

#include "argspec.h"
#include "commands.h"
#include "errors.h"
#include "tensor_util.h"

namespace tcltorch::tcl {

const char* const kDtypeNames[] = {"float32", "float64", "float16", "bfloat16",
                                   "int8",    "int16",   "int32",   "int64",
                                   "uint8",   "bool",    nullptr};

c10::ScalarType dtype_from_name(const std::string& name) {
  static const std::pair<const char*, c10::ScalarType> table[] = {
      {"float32", at::kFloat}, {"float64", at::kDouble}, {"float16", at::kHalf},
      {"bfloat16", at::kBFloat16}, {"int8", at::kChar},  {"int16", at::kShort},
      {"int32", at::kInt},     {"int64", at::kLong},     {"uint8", at::kByte},
      {"bool", at::kBool}};
  for (const auto& [n, t] : table) {
    if (name == n) return t;
  }
  TORCH_CHECK_VALUE(false, "unknown dtype \"", name, "\"");
}

const char* dtype_name(c10::ScalarType dtype) {
  for (auto n = kDtypeNames; *n; ++n) {
    if (dtype_from_name(*n) == dtype) return *n;
  }
  return c10::toString(dtype);
}

int get_shape(Tcl_Interp* interp, const char* option, Tcl_Obj* value,
              std::vector<std::int64_t>& shape) {
  Tcl_Size n = 0;
  Tcl_Obj** items = nullptr;
  if (Tcl_ListObjGetElements(nullptr, value, &n, &items) != TCL_OK) {
    return bad_value(interp, option, value, "must be a list of non-negative integers");
  }
  shape.clear();
  for (Tcl_Size i = 0; i < n; ++i) {
    Tcl_WideInt d = 0;
    if (get_wide_int(items[i], d) != TCL_OK || d < 0) {
      return bad_value(interp, option, value, "must be a list of non-negative integers");
    }
    shape.push_back(d);
  }
  return TCL_OK;
}

namespace {

Tcl_Obj* list_of(const at::Tensor& t, bool floating, std::int64_t dim,
                 const double* dvals, const std::int64_t* ivals,
                 std::int64_t& offset) {
  if (dim == t.dim()) {
    const auto i = offset++;
    return floating ? Tcl_NewDoubleObj(dvals[i]) : Tcl_NewWideIntObj(ivals[i]);
  }
  Tcl_Obj* list = Tcl_NewListObj(0, nullptr);
  for (std::int64_t k = 0; k < t.size(dim); ++k) {
    Tcl_ListObjAppendElement(nullptr, list,
                             list_of(t, floating, dim + 1, dvals, ivals, offset));
  }
  return list;
}

}  // namespace

// Tcl objects a nested list of this shape takes: one per list and per value.
double list_objects(at::IntArrayRef sizes) {
  double total = 1, level = 1;
  for (auto s : sizes) {
    level *= static_cast<double>(s);
    total += level;
  }
  return total;
}

Tcl_Obj* tensor_to_list(const at::Tensor& tensor) {
  const bool floating = tensor.is_floating_point();
  auto flat = tensor.detach().to(at::kCPU, floating ? at::kDouble : at::kLong)
                  .contiguous();
  std::int64_t offset = 0;
  return list_of(flat, floating, 0, floating ? flat.data_ptr<double>() : nullptr,
                 floating ? nullptr : flat.data_ptr<std::int64_t>(), offset);
}

int tensor_result(Registry& registry, Tcl_Interp* interp, at::Tensor tensor) {
  return ok(interp, registry.add(std::move(tensor)));
}

namespace {

// torch::zeros / ones / randn / rand share one table shape and one body.
CommandSpec factory_spec(const char* name) {
  return {name, {
      {.name = "shape", .required = true, .placeholder = "shape"},
      {.name = "dtype", .type = ArgType::String, .default_value = "float32",
       .placeholder = "dtype", .choices = kDtypeNames},
      {.name = "requiresGrad", .snake = "requires_grad", .type = ArgType::Bool,
       .default_value = "0", .placeholder = "bool"},
  }};
}
const CommandSpec kZeros = factory_spec("torch::zeros");
const CommandSpec kOnes = factory_spec("torch::ones");
const CommandSpec kRandn = factory_spec("torch::randn");
const CommandSpec kRand = factory_spec("torch::rand");

using Factory = at::Tensor (*)(at::IntArrayRef, at::TensorOptions, const Args&);

// zeros, ones, randn, rand and full: a shape, a dtype, requiresGrad.
int factory(const CommandSpec& spec, Factory make, Registry& registry,
            Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, spec, objc, objv, args) != TCL_OK) return TCL_ERROR;
  std::vector<std::int64_t> shape;
  if (get_shape(interp, "shape", args.obj("shape"), shape) != TCL_OK) return TCL_ERROR;
  const auto dtype = dtype_from_name(args.str("dtype"));
  if (args.flag("requiresGrad") && !at::isFloatingType(dtype)) {
    return bad_value(interp, "requiresGrad", args.obj("requiresGrad"),
                     "only floating-point tensors can require gradients");
  }
  auto t = make(shape, at::TensorOptions().dtype(dtype), args);
  t.set_requires_grad(args.flag("requiresGrad"));
  return tensor_result(registry, interp, std::move(t));
}

int cmd_zeros(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) {
  return factory(kZeros, [](at::IntArrayRef s, at::TensorOptions o, const Args&) {
    return at::zeros(s, o);
  }, r, i, c, v);
}
int cmd_ones(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) {
  return factory(kOnes, [](at::IntArrayRef s, at::TensorOptions o, const Args&) {
    return at::ones(s, o);
  }, r, i, c, v);
}
int cmd_randn(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) {
  return factory(kRandn, [](at::IntArrayRef s, at::TensorOptions o, const Args&) {
    return at::randn(s, o);
  }, r, i, c, v);
}
int cmd_rand(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) {
  return factory(kRand, [](at::IntArrayRef s, at::TensorOptions o, const Args&) {
    return at::rand(s, o);
  }, r, i, c, v);
}

const CommandSpec kFull{"torch::full", {
    {.name = "shape", .required = true, .placeholder = "shape"},
    {.name = "value", .type = ArgType::Double, .required = true},
    {.name = "dtype", .type = ArgType::String, .default_value = "float32",
     .placeholder = "dtype", .choices = kDtypeNames},
    {.name = "requiresGrad", .snake = "requires_grad", .type = ArgType::Bool,
     .default_value = "0", .placeholder = "bool"},
}};

int cmd_full(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) {
  return factory(kFull, [](at::IntArrayRef s, at::TensorOptions o, const Args& args) {
    return at::full(s, args.number("value"), o);
  }, r, i, c, v);
}

// Reads nested lists of numbers: the shape comes from the first element at
// each depth, and every other element must agree with it.
class Flattener {
 public:
  static constexpr std::size_t kMaxDims = 64;  // LibTorch's own limit for most ops

  Flattener(Tcl_Interp* interp, Tcl_Obj* whole, bool integral)
      : interp_(interp), whole_(whole), integral_(integral) {}

  int run() {
    if (probe(whole_) != TCL_OK) return TCL_ERROR;
    return fill(whole_, 0);
  }

  std::vector<std::int64_t> shape;
  std::vector<double> dvals;
  std::vector<std::int64_t> ivals;

 private:
  int bad() {
    return bad_value(interp_, "values", whole_,
                     std::string("must be a number or a regular nested list of ") +
                         (integral_ ? "integers" : "numbers"));
  }
  bool number(Tcl_Obj* v, bool keep) {
    if (integral_) {
      Tcl_WideInt w = 0;
      if (get_wide_int(v, w) != TCL_OK) return false;
      if (keep) ivals.push_back(w);
    } else {
      double d = 0;
      if (Tcl_GetDoubleFromObj(nullptr, v, &d) != TCL_OK) return false;
      if (keep) dvals.push_back(d);
    }
    return true;
  }
  int elements(Tcl_Obj* v, Tcl_Size& n, Tcl_Obj**& items) {
    if (Tcl_ListObjGetElements(nullptr, v, &n, &items) != TCL_OK) return bad();
    // A one-element list whose element is itself is a word, not a number.
    if (n == 1 && std::strcmp(Tcl_GetString(items[0]), Tcl_GetString(v)) == 0) {
      return bad();
    }
    return TCL_OK;
  }
  int probe(Tcl_Obj* v) {
    while (!number(v, false)) {
      Tcl_Size n = 0;
      Tcl_Obj** items = nullptr;
      if (shape.size() == kMaxDims) {
        return bad_value(interp_, "values", whole_,
                         "must not nest deeper than " + std::to_string(kMaxDims) + " levels");
      }
      if (elements(v, n, items) != TCL_OK) return TCL_ERROR;
      shape.push_back(n);
      if (n == 0) break;
      v = items[0];
    }
    return TCL_OK;
  }
  int fill(Tcl_Obj* v, std::size_t depth) {
    if (depth == shape.size()) return number(v, true) ? TCL_OK : bad();
    Tcl_Size n = 0;
    Tcl_Obj** items = nullptr;
    if (elements(v, n, items) != TCL_OK) return TCL_ERROR;
    if (n != shape[depth]) return bad();
    for (Tcl_Size k = 0; k < n; ++k) {
      if (fill(items[k], depth + 1) != TCL_OK) return TCL_ERROR;
    }
    return TCL_OK;
  }

  Tcl_Interp* interp_;
  Tcl_Obj* whole_;
  bool integral_;
};

// The values an integer dtype narrower than int64 holds.
std::pair<std::int64_t, std::int64_t> integer_range(at::ScalarType dtype) {
  switch (dtype) {
    case at::kChar: return {INT8_MIN, INT8_MAX};
    case at::kShort: return {INT16_MIN, INT16_MAX};
    case at::kInt: return {INT32_MIN, INT32_MAX};
    case at::kByte: return {0, UINT8_MAX};
    default: return {INT64_MIN, INT64_MAX};
  }
}

const CommandSpec kTensorCreate{"torch::tensor_create", {
    {.name = "values", .required = true, .placeholder = "values"},
    {.name = "shape", .placeholder = "shape"},
    {.name = "dtype", .type = ArgType::String, .default_value = "float32",
     .placeholder = "dtype", .choices = kDtypeNames},
    {.name = "requiresGrad", .snake = "requires_grad", .type = ArgType::Bool,
     .default_value = "0", .placeholder = "bool"},
}};

int cmd_tensor_create(Registry& registry, Tcl_Interp* interp, int objc,
                      Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kTensorCreate, objc, objv, args) != TCL_OK) return TCL_ERROR;
  const auto dtype = dtype_from_name(args.str("dtype"));
  const bool integral = !at::isFloatingType(dtype);
  Flattener values(interp, args.obj("values"), integral);
  if (values.run() != TCL_OK) return TCL_ERROR;
  if (integral && dtype != at::kLong && dtype != at::kBool) {
    // As torch.tensor does: a value that does not fit the dtype is an error,
    // not a silent wrap-around.
    const auto [lo, hi] = integer_range(dtype);
    for (const std::int64_t v : values.ivals) {
      if (v < lo || v > hi) {
        Tcl_Obj* bad = Tcl_NewWideIntObj(static_cast<Tcl_WideInt>(v));
        Tcl_IncrRefCount(bad);
        const int rc = bad_value(interp, "values", bad,
                                 "must be integers in [" + std::to_string(lo) + ", " +
                                     std::to_string(hi) + "] for " + args.str("dtype"));
        Tcl_DecrRefCount(bad);
        return rc;
      }
    }
  }
  at::Tensor t = integral ? at::tensor(values.ivals, at::kLong)
                          : at::tensor(values.dvals, at::kDouble);
  std::vector<std::int64_t> shape = values.shape;
  // An empty -shape means "as nested", so the positional form can skip it.
  if (args.has("shape") && Tcl_GetString(args.obj("shape"))[0] != '\0') {
    if (get_shape(interp, "shape", args.obj("shape"), shape) != TCL_OK) return TCL_ERROR;
    const auto numel = c10::multiply_integers(shape);
    if (numel != t.numel()) {
      return bad_value(interp, "shape", args.obj("shape"),
                       "must hold exactly the " + std::to_string(t.numel()) +
                           " values given");
    }
  }
  t = t.reshape(shape).to(dtype).contiguous();
  if (args.flag("requiresGrad")) {
    if (integral) {
      return bad_value(interp, "requiresGrad", args.obj("requiresGrad"),
                       "only floating-point tensors can require gradients");
    }
    t.set_requires_grad(true);
  }
  return tensor_result(registry, interp, std::move(t));
}

// Commands whose only argument is one tensor handle.
CommandSpec one_tensor_spec(const char* name) {
  return {name, {{.name = "tensor", .required = true, .placeholder = "tensor"}}};
}

using TensorBody = int (*)(Registry&, Tcl_Interp*, const at::Tensor&);

int with_tensor(const CommandSpec& spec, TensorBody body, Registry& registry,
                Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, spec, objc, objv, args) != TCL_OK) {
    return TCL_ERROR;
  }
  at::Tensor t;
  if (!registry.get(interp, args.obj("tensor"), t)) return TCL_ERROR;
  return body(registry, interp, t);
}

int item_body(Registry&, Tcl_Interp* interp, const at::Tensor& t) {
  if (t.numel() != 1) {
    return fail(interp,
                "torch::tensor_item: tensor has " + std::to_string(t.numel()) +
                    " elements, item needs exactly one",
                {"TORCH", "VALUE"});
  }
  Tcl_SetObjResult(interp, tensor_to_list(t.reshape({})));
  return TCL_OK;
}

// Beyond this many Tcl objects a list would exhaust memory long before it
// helps anyone; Tcl itself aborts the process when an allocation fails.
constexpr double kMaxListObjects = 1 << 25;

int to_list_body(Registry&, Tcl_Interp* interp, const at::Tensor& t) {
  if (list_objects(t.sizes()) > kMaxListObjects) {
    std::ostringstream msg;
    msg << "torch::tensor_to_list: a tensor of shape " << t.sizes()
        << " is too large for a Tcl list (at most " << static_cast<long long>(kMaxListObjects)
        << " values and lists)";
    return fail(interp, msg.str(), {"TORCH", "VALUE"});
  }
  Tcl_SetObjResult(interp, tensor_to_list(t));
  return TCL_OK;
}

int shape_body(Registry&, Tcl_Interp* interp, const at::Tensor& t) {
  Tcl_Obj* list = Tcl_NewListObj(0, nullptr);
  for (auto s : t.sizes()) Tcl_ListObjAppendElement(nullptr, list, Tcl_NewWideIntObj(s));
  Tcl_SetObjResult(interp, list);
  return TCL_OK;
}

int dtype_body(Registry&, Tcl_Interp* interp, const at::Tensor& t) {
  return ok(interp, dtype_name(t.scalar_type()));
}

int grad_body(Registry& registry, Tcl_Interp* interp, const at::Tensor& t) {
  if (!t.grad().defined()) return ok(interp, "");
  return tensor_result(registry, interp, t.grad());
}

int backward_body(Registry&, Tcl_Interp* interp, const at::Tensor& t) {
  t.backward();
  return ok(interp, "");
}

#define TENSOR_COMMAND(fn, body, tclname)                          \
  const CommandSpec fn##_spec = one_tensor_spec(tclname);          \
  int fn(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) {  \
    return with_tensor(fn##_spec, body, r, i, c, v);               \
  }
TENSOR_COMMAND(cmd_tensor_item, item_body, "torch::tensor_item")
TENSOR_COMMAND(cmd_tensor_to_list, to_list_body, "torch::tensor_to_list")
TENSOR_COMMAND(cmd_tensor_shape, shape_body, "torch::tensor_shape")
TENSOR_COMMAND(cmd_tensor_dtype, dtype_body, "torch::tensor_dtype")
TENSOR_COMMAND(cmd_tensor_grad, grad_body, "torch::tensor_grad")
TENSOR_COMMAND(cmd_tensor_backward, backward_body, "torch::tensor_backward")
#undef TENSOR_COMMAND

const CommandSpec kRequiresGrad{"torch::tensor_requires_grad", {
    {.name = "tensor", .required = true, .placeholder = "tensor"},
    {.name = "value", .type = ArgType::Bool, .placeholder = "bool"},
}};

int cmd_tensor_requires_grad(Registry& registry, Tcl_Interp* interp, int objc,
                             Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kRequiresGrad, objc, objv, args) != TCL_OK) return TCL_ERROR;
  at::Tensor t;
  if (!registry.get(interp, args.obj("tensor"), t)) return TCL_ERROR;
  if (args.has("value")) t.set_requires_grad(args.flag("value"));
  Tcl_SetObjResult(interp, Tcl_NewBooleanObj(t.requires_grad()));
  return TCL_OK;
}

const CommandSpec kManualSeed{"torch::manual_seed", {
    {.name = "seed", .type = ArgType::Int, .required = true, .placeholder = "seed",
     .rule = kNonNegative},
}};

int cmd_manual_seed(Registry&, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kManualSeed, objc, objv, args) != TCL_OK) return TCL_ERROR;
  torch::manual_seed(static_cast<std::uint64_t>(args.integer("seed")));
  return ok(interp, "");
}

// torch::delete handle ?handle ...?: all handles are checked before any is
// deleted, so a typo deletes nothing.
int cmd_delete(Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  std::vector<std::string> names;
  for (int k = 1; k < objc; ++k) {
    Tcl_Size n = 0;
    Tcl_Obj** items = nullptr;
    if (Tcl_ListObjGetElements(interp, objv[k], &n, &items) != TCL_OK) return TCL_ERROR;
    for (Tcl_Size j = 0; j < n; ++j) {
      std::string name = Tcl_GetString(items[j]);
      if (!registry.kind_of(name)) {
        return fail(interp, "invalid handle \"" + name + "\": no such handle",
                    {"TORCH", "HANDLE", name});
      }
      names.push_back(std::move(name));
    }
  }
  for (const auto& name : names) registry.remove(name);
  return ok(interp, "");
}

const CommandSpec kHandles{"torch::handles", {
    {.name = "pattern", .type = ArgType::String, .placeholder = "pattern"},
}};

int cmd_handles(Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kHandles, objc, objv, args) != TCL_OK) return TCL_ERROR;
  const std::string pattern = args.has("pattern") ? args.str("pattern") : "*";
  Tcl_Obj* list = Tcl_NewListObj(0, nullptr);
  for (const auto& h : registry.handles(pattern.c_str())) {
    Tcl_ListObjAppendElement(nullptr, list,
                             Tcl_NewStringObj(h.data(), static_cast<int>(h.size())));
  }
  Tcl_SetObjResult(interp, list);
  return TCL_OK;
}

}  // namespace

const std::vector<CommandDef>& tensor_commands() {
  static const std::vector<CommandDef> table = {
      {"torch::zeros", cmd_zeros},
      {"torch::ones", cmd_ones},
      {"torch::randn", cmd_randn},
      {"torch::rand", cmd_rand},
      {"torch::full", cmd_full},
      {"torch::tensor_create", cmd_tensor_create},
      {"torch::tensor_item", cmd_tensor_item},
      {"torch::tensor_to_list", cmd_tensor_to_list},
      {"torch::tensor_shape", cmd_tensor_shape},
      {"torch::tensor_dtype", cmd_tensor_dtype},
      {"torch::tensor_grad", cmd_tensor_grad},
      {"torch::tensor_backward", cmd_tensor_backward},
      {"torch::tensor_requires_grad", cmd_tensor_requires_grad},
      {"torch::manual_seed", cmd_manual_seed},
      {"torch::delete", cmd_delete},
      {"torch::handles", cmd_handles},
  };
  return table;
}

}  // namespace tcltorch::tcl
