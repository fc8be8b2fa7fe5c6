// Module and loss commands: building networks and running them.
#include <torch/nn/functional/loss.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/serialize/archive.h>

#include <set>
#include <sstream>

#include "argspec.h"
#include "tcltorch/checkpoint.h"
#include "commands.h"
#include "errors.h"
#include "objects.h"
#include "tensor_util.h"

namespace tcltorch::tcl {
namespace {

int module_result(Registry& registry, Tcl_Interp* interp, std::string type,
                  torch::nn::AnyModule module) {
  return ok(interp, registry.add(std::make_shared<ModuleEntry>(
                        ModuleEntry{std::move(type), std::move(module)})));
}

const CommandSpec kLinear{"torch::linear", {
    {.name = "inFeatures", .snake = "in_features", .type = ArgType::Int,
     .required = true, .placeholder = "int", .rule = kPositiveInt},
    {.name = "outFeatures", .snake = "out_features", .type = ArgType::Int,
     .required = true, .placeholder = "int", .rule = kPositiveInt},
    {.name = "bias", .type = ArgType::Bool, .default_value = "1", .placeholder = "bool"},
}};

int cmd_linear(Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kLinear, objc, objv, args) != TCL_OK) return TCL_ERROR;
  torch::nn::Linear linear(
      torch::nn::LinearOptions(args.integer("inFeatures"), args.integer("outFeatures"))
          .bias(args.flag("bias")));
  return module_result(registry, interp, "linear", torch::nn::AnyModule(linear));
}

// Activations: with a tensor, applied to it; without, a module for a
// sequential.
CommandSpec activation_spec(const char* name) {
  return {name, {{.name = "input", .placeholder = "tensor"}}};
}
const CommandSpec kRelu = activation_spec("torch::relu");
const CommandSpec kTanh = activation_spec("torch::tanh");
const CommandSpec kSigmoid = activation_spec("torch::sigmoid");
const CommandSpec kGelu = activation_spec("torch::gelu");

template <class Module>
int activation(const CommandSpec& spec, const char* type, at::Tensor (*apply)(const at::Tensor&),
               Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, spec, objc, objv, args) != TCL_OK) return TCL_ERROR;
  if (!args.has("input")) {
    return module_result(registry, interp, type, torch::nn::AnyModule(Module()));
  }
  at::Tensor input;
  if (!registry.get(interp, args.obj("input"), input)) return TCL_ERROR;
  return tensor_result(registry, interp, apply(input));
}

at::Tensor apply_relu(const at::Tensor& t) { return torch::relu(t); }
at::Tensor apply_tanh(const at::Tensor& t) { return torch::tanh(t); }
at::Tensor apply_sigmoid(const at::Tensor& t) { return torch::sigmoid(t); }
at::Tensor apply_gelu(const at::Tensor& t) { return torch::gelu(t); }

int cmd_relu(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) {
  return activation<torch::nn::ReLU>(kRelu, "relu", apply_relu, r, i, c, v);
}
int cmd_tanh(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) {
  return activation<torch::nn::Tanh>(kTanh, "tanh", apply_tanh, r, i, c, v);
}
int cmd_sigmoid(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) {
  return activation<torch::nn::Sigmoid>(kSigmoid, "sigmoid", apply_sigmoid, r, i, c, v);
}
int cmd_gelu(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) {
  return activation<torch::nn::GELU>(kGelu, "gelu", apply_gelu, r, i, c, v);
}

const CommandSpec kDropout{"torch::dropout", {
    {.name = "p", .type = ArgType::Double, .default_value = "0.5", .rule = kUnitInterval},
}};

// A dropout module: active in training mode, the identity in eval mode.
int cmd_dropout(Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kDropout, objc, objv, args) != TCL_OK) return TCL_ERROR;
  return module_result(registry, interp, "dropout",
                       torch::nn::AnyModule(torch::nn::Dropout(args.number("p"))));
}

CommandSpec one_module_spec(const char* name) {
  return {name, {{.name = "module", .required = true, .placeholder = "module"}}};
}
const CommandSpec kTrain = one_module_spec("torch::train");
const CommandSpec kEval = one_module_spec("torch::eval");

int set_mode(const CommandSpec& spec, bool training, Registry& registry, Tcl_Interp* interp,
             int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, spec, objc, objv, args) != TCL_OK) return TCL_ERROR;
  std::shared_ptr<ModuleEntry> module;
  if (!registry.get(interp, args.obj("module"), module)) return TCL_ERROR;
  module->module.ptr()->train(training);
  return ok(interp, "");
}
int cmd_train(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) { return set_mode(kTrain, true, r, i, c, v); }
int cmd_eval(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) { return set_mode(kEval, false, r, i, c, v); }

std::shared_ptr<torch::nn::SequentialImpl> as_sequential(Tcl_Interp* interp,
                                                         Tcl_Obj* handle,
                                                         const ModuleEntry& entry) {
  auto seq = std::dynamic_pointer_cast<torch::nn::SequentialImpl>(entry.module.ptr());
  if (!seq) {
    const std::string name = Tcl_GetString(handle);
    fail(interp, "\"" + name + "\" is a " + entry.type + " module, not a sequential",
         {"TORCH", "HANDLE", name});
  }
  return seq;
}

const CommandSpec kSequential{"torch::sequential", {
    {.name = "modules", .placeholder = "moduleList"},
}};

int cmd_sequential(Registry& registry, Tcl_Interp* interp, int objc,
                   Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kSequential, objc, objv, args) != TCL_OK) return TCL_ERROR;
  TclSequential seq;
  if (args.has("modules")) {
    Tcl_Size n = 0;
    Tcl_Obj** items = nullptr;
    if (Tcl_ListObjGetElements(nullptr, args.obj("modules"), &n, &items) != TCL_OK) {
      return bad_value(interp, "modules", args.obj("modules"),
                       "must be a list of module handles");
    }
    for (Tcl_Size k = 0; k < n; ++k) {
      std::shared_ptr<ModuleEntry> child;
      if (!registry.get(interp, items[k], child)) return TCL_ERROR;
      seq->push_back(child->module);
    }
  }
  return module_result(registry, interp, "sequential", torch::nn::AnyModule(seq));
}

const CommandSpec kAddModule{"torch::add_module", {
    {.name = "sequential", .required = true, .placeholder = "sequential"},
    {.name = "module", .required = true, .placeholder = "module"},
}};

int cmd_add_module(Registry& registry, Tcl_Interp* interp, int objc,
                   Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kAddModule, objc, objv, args) != TCL_OK) return TCL_ERROR;
  std::shared_ptr<ModuleEntry> parent, child;
  if (!registry.get(interp, args.obj("sequential"), parent) ||
      !registry.get(interp, args.obj("module"), child)) {
    return TCL_ERROR;
  }
  auto seq = as_sequential(interp, args.obj("sequential"), *parent);
  if (!seq) return TCL_ERROR;
  // A module that contains the sequential (or is it) would make a cycle that
  // every later walk over the modules recurses into forever.
  for (const auto& m : child->module.ptr()->modules(/*include_self=*/true)) {
    if (m.get() == seq.get()) {
      return fail(interp,
                  std::string("cannot add \"") + Tcl_GetString(args.obj("module")) +
                      "\" to \"" + Tcl_GetString(args.obj("sequential")) +
                      "\": it is or contains that sequential (modules cannot form a cycle)",
                  {"TORCH", "VALUE"});
    }
  }
  seq->push_back(child->module);
  return ok(interp, "");
}

const CommandSpec kForward{"torch::forward", {
    {.name = "module", .required = true, .placeholder = "module"},
    {.name = "input", .required = true, .placeholder = "tensor"},
}};

int cmd_forward(Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kForward, objc, objv, args) != TCL_OK) return TCL_ERROR;
  std::shared_ptr<ModuleEntry> module;
  at::Tensor input;
  if (!registry.get(interp, args.obj("module"), module) ||
      !registry.get(interp, args.obj("input"), input)) {
    return TCL_ERROR;
  }
  return tensor_result(registry, interp, module->module.forward(input));
}

const CommandSpec kParameters{"torch::parameters", {
    {.name = "module", .required = true, .placeholder = "module"},
}};

int cmd_parameters(Registry& registry, Tcl_Interp* interp, int objc,
                   Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kParameters, objc, objv, args) != TCL_OK) return TCL_ERROR;
  std::shared_ptr<ModuleEntry> module;
  if (!registry.get(interp, args.obj("module"), module)) return TCL_ERROR;
  Tcl_Obj* list = Tcl_NewListObj(0, nullptr);
  for (const auto& p : module->module.ptr()->parameters()) {
    const std::string h = registry.add(p);
    Tcl_ListObjAppendElement(nullptr, list,
                             Tcl_NewStringObj(h.data(), static_cast<int>(h.size())));
  }
  Tcl_SetObjResult(interp, list);
  return TCL_OK;
}

const char* const kReductions[] = {"mean", "sum", "none", nullptr};

CommandSpec loss_spec(const char* name) {
  return {name, {
      {.name = "input", .required = true, .placeholder = "tensor"},
      {.name = "target", .required = true, .placeholder = "tensor"},
      {.name = "reduction", .type = ArgType::String, .default_value = "mean",
       .placeholder = "reduction", .choices = kReductions},
  }};
}
const CommandSpec kMseLoss = loss_spec("torch::mse_loss");
const CommandSpec kCrossEntropyLoss = loss_spec("torch::cross_entropy_loss");

using Reduction = std::variant<torch::enumtype::kNone, torch::enumtype::kMean,
                               torch::enumtype::kSum>;

Reduction reduction_of(const std::string& name) {
  if (name == "sum") return torch::kSum;
  if (name == "none") return torch::kNone;
  return torch::kMean;
}

int loss(const CommandSpec& spec, Registry& registry, Tcl_Interp* interp, int objc,
         Tcl_Obj* const objv[], bool cross_entropy) {
  Args args;
  if (parse_args(interp, spec, objc, objv, args) != TCL_OK) return TCL_ERROR;
  at::Tensor input, target;
  if (!registry.get(interp, args.obj("input"), input) ||
      !registry.get(interp, args.obj("target"), target)) {
    return TCL_ERROR;
  }
  const auto reduction = reduction_of(args.str("reduction"));
  namespace F = torch::nn::functional;
  at::Tensor out =
      cross_entropy
          ? F::cross_entropy(input, target,
                             F::CrossEntropyFuncOptions().reduction(reduction))
          : F::mse_loss(input, target, F::MSELossFuncOptions().reduction(reduction));
  return tensor_result(registry, interp, std::move(out));
}

int cmd_mse_loss(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) {
  return loss(kMseLoss, r, i, c, v, false);
}
int cmd_cross_entropy_loss(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) {
  return loss(kCrossEntropyLoss, r, i, c, v, true);
}

const CommandSpec kModuleSave{"torch::module_save", {
    {.name = "module", .required = true, .placeholder = "module"},
    {.name = "file", .type = ArgType::String, .required = true, .placeholder = "file"},
}};
const CommandSpec kModuleLoad{"torch::module_load", {
    {.name = "module", .required = true, .placeholder = "module"},
    {.name = "file", .type = ArgType::String, .required = true, .placeholder = "file"},
}};

int cmd_module_save(Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kModuleSave, objc, objv, args) != TCL_OK) return TCL_ERROR;
  std::shared_ptr<ModuleEntry> module;
  if (!registry.get(interp, args.obj("module"), module)) return TCL_ERROR;
  const std::string file = args.str("file");
  try {
    tcltorch::write_atomically(file, [&](const std::string& tmp) {
      torch::serialize::OutputArchive archive;
      module->module.ptr()->save(archive);
      archive.save_to(tmp);
    });
  } catch (const c10::Error& e) {
    return fail(interp, "cannot save module to \"" + file + "\": " + e.what_without_backtrace(),
                {"TORCH", "FILE", file});
  } catch (const std::runtime_error& e) {
    return fail(interp, "cannot save module to \"" + file + "\": " + e.what(),
                {"TORCH", "FILE", file});
  }
  return ok(interp, "");
}

// Reads every parameter and buffer of `module` from `archive`, checking names,
// shapes and dtypes, into `pending` (live tensor, value read).
void read_module(torch::serialize::InputArchive& archive, torch::nn::Module& module,
                 const std::string& prefix,
                 std::vector<std::pair<at::Tensor, at::Tensor>>& pending) {
  auto take = [&](const std::string& key, const at::Tensor& live, bool is_buffer) {
    at::Tensor value;
    if (!archive.try_read(key, value, is_buffer)) {
      throw std::runtime_error("the file has no " + std::string(is_buffer ? "buffer" : "parameter") +
                               " \"" + prefix + key + "\"");
    }
    if (value.sizes() != live.sizes() || value.scalar_type() != live.scalar_type()) {
      std::ostringstream msg;
      msg << "\"" << prefix << key << "\" is " << value.scalar_type() << value.sizes()
          << " in the file but " << live.scalar_type() << live.sizes() << " in the module";
      throw std::runtime_error(msg.str());
    }
    pending.emplace_back(live, value);
  };
  std::set<std::string> expected;
  for (const auto& p : module.named_parameters(/*recurse=*/false)) {
    take(p.key(), p.value(), false);
    expected.insert(p.key());
  }
  for (const auto& b : module.named_buffers(/*recurse=*/false)) {
    take(b.key(), b.value(), true);
    expected.insert(b.key());
  }
  for (const auto& child : module.named_children()) expected.insert(child.key());
  for (const auto& key : archive.keys()) {
    if (!expected.count(key)) {
      throw std::runtime_error("the file has \"" + prefix + key +
                               "\", which the module does not (another architecture?)");
    }
  }
  for (const auto& child : module.named_children()) {
    torch::serialize::InputArchive sub;
    if (!archive.try_read(child.key(), sub)) {
      throw std::runtime_error("the file has no submodule \"" + prefix + child.key() + "\"");
    }
    read_module(sub, *child.value(), prefix + child.key() + ".", pending);
  }
}

// Loads parameters saved by torch::module_save (or C++ torch::save of the
// same architecture). Nothing changes unless the whole file matches.
int cmd_module_load(Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kModuleLoad, objc, objv, args) != TCL_OK) return TCL_ERROR;
  std::shared_ptr<ModuleEntry> module;
  if (!registry.get(interp, args.obj("module"), module)) return TCL_ERROR;
  const std::string file = args.str("file");
  std::vector<std::pair<at::Tensor, at::Tensor>> pending;
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(file);
    read_module(archive, *module->module.ptr(), "", pending);
  } catch (const c10::Error& e) {
    return fail(interp, "cannot load module from \"" + file + "\": " + e.what_without_backtrace(),
                {"TORCH", "FILE", file});
  } catch (const std::runtime_error& e) {
    return fail(interp, "cannot load module from \"" + file + "\": " + e.what(),
                {"TORCH", "FILE", file});
  }
  torch::NoGradGuard no_grad;
  for (auto& [live, value] : pending) live.copy_(value);
  return ok(interp, "");
}

}  // namespace

const std::vector<CommandDef>& module_commands() {
  static const std::vector<CommandDef> table = {
      {"torch::linear", cmd_linear},
      {"torch::relu", cmd_relu},
      {"torch::tanh", cmd_tanh},
      {"torch::sigmoid", cmd_sigmoid},
      {"torch::gelu", cmd_gelu},
      {"torch::dropout", cmd_dropout},
      {"torch::train", cmd_train},
      {"torch::eval", cmd_eval},
      {"torch::module_save", cmd_module_save},
      {"torch::module_load", cmd_module_load},
      {"torch::sequential", cmd_sequential},
      {"torch::add_module", cmd_add_module},
      {"torch::forward", cmd_forward},
      {"torch::parameters", cmd_parameters},
      {"torch::mse_loss", cmd_mse_loss},
      {"torch::cross_entropy_loss", cmd_cross_entropy_loss},
  };
  return table;
}

}  // namespace tcltorch::tcl
