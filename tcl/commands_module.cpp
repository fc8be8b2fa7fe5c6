// Module and loss commands: building networks and running them.
#include <torch/nn/functional/loss.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>

#include "argspec.h"
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

const CommandSpec kRelu{"torch::relu", {
    {.name = "input", .placeholder = "tensor"},
}};

// With a tensor: applies ReLU to it. Without: a ReLU module for a sequential.
int cmd_relu(Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kRelu, objc, objv, args) != TCL_OK) return TCL_ERROR;
  if (!args.has("input")) {
    return module_result(registry, interp, "relu", torch::nn::AnyModule(torch::nn::ReLU()));
  }
  at::Tensor input;
  if (!registry.get(interp, args.obj("input"), input)) return TCL_ERROR;
  return tensor_result(registry, interp, torch::relu(input));
}

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
  if (child->module.ptr().get() == seq.get()) {
    return fail(interp, "cannot add a sequential to itself", {"TORCH", "VALUE"});
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

}  // namespace

const std::vector<CommandDef>& module_commands() {
  static const std::vector<CommandDef> table = {
      {"torch::linear", cmd_linear},
      {"torch::relu", cmd_relu},
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
