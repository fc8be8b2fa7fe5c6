// Optimizer commands: torch::optimizer_adafactor and the commands that drive
// any optimizer handle. The Tcl layer only translates arguments: the
// algorithm is tcltorch::Adafactor in csrc/.
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/optimizer.h>
#include <torch/optim/sgd.h>
#include <torch/serialize.h>

#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "adafactor_args.h"
#include "argspec.h"
#include "tcltorch/checkpoint.h"
#include "commands.h"
#include "distributed.h"
#include "errors.h"
#include "objects.h"
#include "tensor_util.h"
#include "tcltorch/adafactor.h"
#include "tcltorch/distributed_error.h"
#include "tcltorch/step_in_backward.h"

namespace tcltorch::tcl {
namespace {

// -parameters: a tensor handle, a module handle, or a list mixing them.
int collect_parameters(Registry& registry, Tcl_Interp* interp, Tcl_Obj* value,
                       std::vector<at::Tensor>& out) {
  Tcl_Size n = 0;
  Tcl_Obj** items = nullptr;
  if (Tcl_ListObjGetElements(nullptr, value, &n, &items) != TCL_OK || n == 0) {
    return bad_value(interp, "parameters", value,
                     "must be a tensor handle, a module handle or a list of them");
  }
  std::unordered_set<const void*> seen;
  std::vector<std::string> frozen;  // sources of parameters without requires_grad
  auto take = [&](const at::Tensor& t, const std::string& from) {
    if (!t.is_floating_point()) {
      return bad_value(interp, "parameters", value,
                       from + " is not a floating-point tensor");
    }
    if (!t.is_leaf()) {
      return bad_value(interp, "parameters", value,
                       from + " is not a leaf tensor (it was computed from others)");
    }
    if (!t.requires_grad() && std::find(frozen.begin(), frozen.end(), from) == frozen.end()) {
      frozen.push_back(from);
    }
    if (seen.insert(t.unsafeGetTensorImpl()).second) out.push_back(t);
    return TCL_OK;
  };
  for (Tcl_Size k = 0; k < n; ++k) {
    const std::string name = Tcl_GetString(items[k]);
    const Kind* kind = registry.kind_of(name);
    if (kind && *kind == Kind::Module) {
      std::shared_ptr<ModuleEntry> module;
      registry.get(interp, items[k], module);
      for (const auto& p : module->module.ptr()->parameters()) {
        if (take(p, "a parameter of " + name) != TCL_OK) return TCL_ERROR;
      }
    } else if (kind && *kind == Kind::Tensor) {
      at::Tensor t;
      registry.get(interp, items[k], t);
      if (take(t, name) != TCL_OK) return TCL_ERROR;
    } else {
      return fail(interp,
                  "bad value \"" + name + "\" for -parameters: " +
                      (kind ? a_kind(*kind) + " handle is not a tensor or module"
                            : "no such tensor or module handle"),
                  {"TORCH", "HANDLE", name});
    }
  }
  if (out.empty()) {
    return bad_value(interp, "parameters", value, "holds no parameters");
  }
  // Legal (the gradient may be set by other means) but almost always a
  // mistake: backward never gives such a tensor a gradient.
  for (const auto& from : frozen) {
    const bool tensor = from.rfind("a parameter of ", 0) != 0;
    warn(from + " does not require grad: until it does, backward gives it no gradient"
         " and no optimizer step updates it" +
         (tensor ? " (turn it on with torch::tensor_requires_grad " + from + " 1)" : ""));
  }
  return TCL_OK;
}

// Registers an optimizer made by `make` (called now, and again for a fresh
// copy when a checkpoint is loaded), once `setup` (if any) accepted it.
int optimizer_result(Registry& registry, Tcl_Interp* interp, std::string type,
                     std::function<std::unique_ptr<torch::optim::Optimizer>()> make,
                     const std::function<int(torch::optim::Optimizer&)>& setup = nullptr) {
  auto optimizer = make();
  if (setup && setup(*optimizer) != TCL_OK) return TCL_ERROR;
  return ok(interp, registry.add(std::make_shared<OptimizerEntry>(
                        OptimizerEntry{std::move(type), std::move(optimizer), std::move(make)})));
}

// ------------------------------------------------------------ Adafactor

const NumberRule kBeta{[](double v) { return v >= 0 && v < 1; }, "in [0, 1)"};
const NumberRule kAccumulateSteps{
    [](double v) { return rule_accepts(kAccumulateStepsRule, v); }, accumulate_steps_requirement()};

// The Adafactor options come from the core's table (adafactor_args.h); the
// door-level arguments are the command's own.
CommandSpec adafactor_spec(const char* name) {
  return adafactor_command_spec(
      name, {{.name = "parameters", .required = true, .placeholder = "tensorsOrModule"}},
      {{.name = "groups", .placeholder = "groups", .positional = false},
       // ZeRO-1 over the interpreter's process group (commands_distributed.cpp).
       {.name = "shardState", .snake = "shard_state", .type = ArgType::Bool,
        .default_value = "0", .placeholder = "bool", .positional = false},
       // Steps inside torch::tensor_backward (csrc/step_in_backward.cpp).
       {.name = "stepInBackward", .snake = "step_in_backward", .type = ArgType::Bool,
        .default_value = "0", .placeholder = "bool", .positional = false},
       {.name = "accumulateSteps", .snake = "accumulate_steps", .type = ArgType::Int,
        .default_value = "1", .placeholder = "n", .rule = kAccumulateSteps, .positional = false}});
}
const CommandSpec kAdafactor = adafactor_spec("torch::optimizer_adafactor");
const CommandSpec kAdafactorAlias = adafactor_spec("torch::optimizerAdafactor");
// One element of -groups: its parameters and options overriding the command's.
const CommandSpec kAdafactorGroup = adafactor_command_spec(
    "group", {{.name = "parameters", .required = true, .placeholder = "tensorsOrModule"}});

AdafactorOptions options_of(const AdafactorSettings& settings) {
  AdafactorOptions options;
  for (const auto& [info, value] : settings) set_adafactor_option(options, *info, value);
  return options;
}

// The parameter groups of -groups, in order, then the command's -parameters
// that no group names (with the command's options), when there are any.
int adafactor_groups(Registry& registry, Tcl_Interp* interp, const Args& args,
                     std::vector<std::pair<std::vector<at::Tensor>, AdafactorOptions>>& out,
                     AdafactorOptions& command_options) {
  AdafactorSettings settings;
  if (adafactor_settings(interp, {&args}, settings) != TCL_OK) return TCL_ERROR;
  std::vector<at::Tensor> all;
  if (collect_parameters(registry, interp, args.obj("parameters"), all) != TCL_OK) {
    return TCL_ERROR;
  }
  command_options = options_of(settings);
  std::unordered_set<const void*> grouped;
  if (args.has("groups")) {
    Tcl_Size n = 0;
    Tcl_Obj** items = nullptr;
    if (Tcl_ListObjGetElements(nullptr, args.obj("groups"), &n, &items) != TCL_OK) {
      return bad_value(interp, "groups", args.obj("groups"),
                       "must be a list of groups, each a list {-parameters ... ?option value ...?}");
    }
    for (Tcl_Size k = 0; k < n; ++k) {
      // An error inside a group says which one; its -errorcode stays.
      auto in_group = [&](int rc) {
        if (rc != TCL_OK) {
          Tcl_Obj* message = Tcl_DuplicateObj(Tcl_GetObjResult(interp));
          Tcl_AppendPrintfToObj(message, " (group %d of -groups)", static_cast<int>(k + 1));
          Tcl_SetObjResult(interp, message);
        }
        return rc;
      };
      Tcl_Size m = 0;
      Tcl_Obj** words = nullptr;
      if (Tcl_ListObjGetElements(nullptr, items[k], &m, &words) != TCL_OK) {
        return bad_value(interp, "groups", items[k], "must be a list {-parameters ... ?option value ...?}");
      }
      // parse_args skips objv[0] (the command's name).
      std::vector<Tcl_Obj*> objv{args.obj("groups")};
      objv.insert(objv.end(), words, words + m);
      Args group;
      if (in_group(parse_args(interp, kAdafactorGroup, static_cast<int>(objv.size()),
                              objv.data(), group)) != TCL_OK) {
        return TCL_ERROR;
      }
      std::vector<at::Tensor> params;
      if (in_group(collect_parameters(registry, interp, group.obj("parameters"), params)) != TCL_OK) {
        return TCL_ERROR;
      }
      for (const auto& p : params) {
        if (!grouped.insert(p.unsafeGetTensorImpl()).second) {
          return in_group(bad_value(interp, "groups", items[k],
                                    "a parameter is already in an earlier group"));
        }
      }
      if (in_group(adafactor_settings(interp, {&group, &args}, settings)) != TCL_OK) {
        return TCL_ERROR;
      }
      out.emplace_back(std::move(params), options_of(settings));
    }
  }
  std::vector<at::Tensor> rest;
  for (const auto& p : all) {
    if (!grouped.count(p.unsafeGetTensorImpl())) rest.push_back(p);
  }
  if (!rest.empty()) out.emplace_back(std::move(rest), command_options);
  return TCL_OK;
}

int adafactor(const CommandSpec& spec, Registry& registry, Tcl_Interp* interp,
              int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, spec, objc, objv, args) != TCL_OK) return TCL_ERROR;
  const bool in_backward = args.flag("stepInBackward");
  if (in_backward && args.flag("shardState")) {
    return bad_value(interp, "stepInBackward", args.obj("stepInBackward"),
                     "cannot be combined with -shardState 1: " +
                         step_in_backward_conflict(StepInBackwardConflict::ShardedState));
  }
  if (!in_backward && args.integer("accumulateSteps") != 1) {
    return bad_value(interp, "accumulateSteps", args.obj("accumulateSteps"),
                     "takes effect only with -stepInBackward 1");
  }
  // The core's refusals (a parameter of a data parallel module, one that
  // already has a post-accumulate-grad hook), as a bad -stepInBackward.
  auto setup = [&](torch::optim::Optimizer& o) {
    if (!in_backward) return TCL_OK;
    try {
      static_cast<Adafactor&>(o).set_step_in_backward(true, args.integer("accumulateSteps"));
    } catch (const c10::ValueError& e) {
      return bad_value(interp, "stepInBackward", args.obj("stepInBackward"),
                       e.what_without_backtrace());
    }
    return TCL_OK;
  };
  std::vector<std::pair<std::vector<at::Tensor>, AdafactorOptions>> groups;
  AdafactorOptions defaults;
  if (adafactor_groups(registry, interp, args, groups, defaults) != TCL_OK) return TCL_ERROR;
  if (args.flag("shardState")) return sharded_adafactor_result(registry, interp, groups, defaults);
  if (groups.size() == 1) {
    return optimizer_result(registry, interp, "adafactor",
                            [params = groups[0].first, options = groups[0].second] {
                              return std::make_unique<Adafactor>(params, options);
                            },
                            setup);
  }
  return optimizer_result(registry, interp, "adafactor", [groups, defaults] {
    std::vector<torch::optim::OptimizerParamGroup> param_groups;
    for (const auto& [params, options] : groups) {
      param_groups.emplace_back(params, std::make_unique<AdafactorOptions>(options));
    }
    return std::make_unique<Adafactor>(param_groups, defaults);
  }, setup);
}

int cmd_optimizer_adafactor(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) {
  return adafactor(kAdafactor, r, i, c, v);
}
int cmd_optimizer_adafactor_alias(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) {
  return adafactor(kAdafactorAlias, r, i, c, v);
}

// ------------------------------------------------------------ LibTorch's own

CommandSpec adam_spec(const char* name, const char* weight_decay) {
  return {name, {
      {.name = "parameters", .required = true, .placeholder = "tensorsOrModule"},
      {.name = "lr", .type = ArgType::Double, .default_value = "0.001", .rule = kNonNegative},
      {.name = "beta1", .type = ArgType::Double, .default_value = "0.9", .rule = kBeta},
      {.name = "beta2", .type = ArgType::Double, .default_value = "0.999", .rule = kBeta},
      {.name = "eps", .type = ArgType::Double, .default_value = "1e-8", .rule = kNonNegative},
      {.name = "weightDecay", .snake = "weight_decay", .type = ArgType::Double,
       .default_value = weight_decay, .rule = kNonNegative},
      {.name = "amsgrad", .type = ArgType::Bool, .default_value = "0", .placeholder = "bool"},
  }};
}
const CommandSpec kAdam = adam_spec("torch::optimizer_adam", "0.0");
const CommandSpec kAdamW = adam_spec("torch::optimizer_adamw", "0.01");

template <class Optimizer, class Options>
int adam_like(const CommandSpec& spec, const char* type, Registry& registry,
              Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, spec, objc, objv, args) != TCL_OK) return TCL_ERROR;
  std::vector<at::Tensor> params;
  if (collect_parameters(registry, interp, args.obj("parameters"), params) != TCL_OK) {
    return TCL_ERROR;
  }
  Options options(args.number("lr"));
  options.betas({args.number("beta1"), args.number("beta2")})
      .eps(args.number("eps"))
      .weight_decay(args.number("weightDecay"))
      .amsgrad(args.flag("amsgrad"));
  return optimizer_result(registry, interp, type, [params, options] {
    return std::make_unique<Optimizer>(params, options);
  });
}

int cmd_optimizer_adam(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) {
  return adam_like<torch::optim::Adam, torch::optim::AdamOptions>(kAdam, "adam", r, i, c, v);
}
int cmd_optimizer_adamw(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) {
  return adam_like<torch::optim::AdamW, torch::optim::AdamWOptions>(kAdamW, "adamw", r, i, c, v);
}

// (1 - dampening) weights the gradient in the momentum buffer.
const NumberRule kUnitInterval{[](double v) { return v >= 0 && v <= 1; }, "in [0, 1]"};

const CommandSpec kSgd{"torch::optimizer_sgd", {
    {.name = "parameters", .required = true, .placeholder = "tensorsOrModule"},
    {.name = "lr", .type = ArgType::Double, .default_value = "0.001", .rule = kNonNegative},
    {.name = "momentum", .type = ArgType::Double, .default_value = "0.0", .rule = kNonNegative},
    {.name = "dampening", .type = ArgType::Double, .default_value = "0.0", .rule = kUnitInterval},
    {.name = "weightDecay", .snake = "weight_decay", .type = ArgType::Double,
     .default_value = "0.0", .rule = kNonNegative},
    {.name = "nesterov", .type = ArgType::Bool, .default_value = "0", .placeholder = "bool"},
}};

int cmd_optimizer_sgd(Registry& registry, Tcl_Interp* interp, int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kSgd, objc, objv, args) != TCL_OK) return TCL_ERROR;
  if (args.flag("nesterov") && (args.number("momentum") <= 0 || args.number("dampening") != 0)) {
    return bad_value(interp, "nesterov", args.obj("nesterov"),
                     "needs -momentum > 0 and -dampening 0");
  }
  std::vector<at::Tensor> params;
  if (collect_parameters(registry, interp, args.obj("parameters"), params) != TCL_OK) {
    return TCL_ERROR;
  }
  torch::optim::SGDOptions options(args.number("lr"));
  options.momentum(args.number("momentum"))
      .dampening(args.number("dampening"))
      .weight_decay(args.number("weightDecay"))
      .nesterov(args.flag("nesterov"));
  return optimizer_result(registry, interp, "sgd", [params, options] {
    return std::make_unique<torch::optim::SGD>(params, options);
  });
}

// ------------------------------------------------------------ any optimizer

bool has_gradients(const torch::optim::Optimizer& optimizer) {
  for (const auto& group : optimizer.param_groups()) {
    for (const auto& p : group.params()) {
      if (p.grad().defined()) return true;
    }
  }
  return false;
}

const CommandSpec kStep{"torch::optimizer_step", {
    {.name = "optimizer", .required = true, .placeholder = "optimizer"},
}};

int cmd_optimizer_step(Registry& registry, Tcl_Interp* interp, int objc,
                       Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kStep, objc, objv, args) != TCL_OK) return TCL_ERROR;
  std::shared_ptr<OptimizerEntry> opt;
  if (!registry.get(interp, args.obj("optimizer"), opt)) return TCL_ERROR;
  // Stepping inside backward, gradients are freed there and this step does
  // nothing (Adafactor::step).
  auto* ada = dynamic_cast<const Adafactor*>(opt->optimizer.get());
  const bool in_backward = ada && ada->step_in_backward();
  if (!opt->warned_no_gradients && !in_backward && !has_gradients(*opt->optimizer)) {
    opt->warned_no_gradients = true;
    warn(std::string("torch::optimizer_step: no parameter of ") +
         Tcl_GetString(args.obj("optimizer")) +
         " has a gradient, so the step changed nothing (call torch::tensor_backward on a"
         " loss first; said once per optimizer)");
  }
  opt->optimizer->step();
  return ok(interp, "");
}

const CommandSpec kZeroGrad{"torch::optimizer_zero_grad", {
    {.name = "optimizer", .required = true, .placeholder = "optimizer"},
    {.name = "setToNone", .snake = "set_to_none", .type = ArgType::Bool,
     .default_value = "1", .placeholder = "bool"},
}};

int cmd_optimizer_zero_grad(Registry& registry, Tcl_Interp* interp, int objc,
                            Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kZeroGrad, objc, objv, args) != TCL_OK) return TCL_ERROR;
  std::shared_ptr<OptimizerEntry> opt;
  if (!registry.get(interp, args.obj("optimizer"), opt)) return TCL_ERROR;
  opt->optimizer->zero_grad(args.flag("setToNone"));
  return ok(interp, "");
}

const CommandSpec kLr{"torch::optimizer_lr", {
    {.name = "optimizer", .required = true, .placeholder = "optimizer"},
    {.name = "lr", .type = ArgType::Double, .rule = kNonNegative},
}};

// Reads, or sets for every parameter group, the learning rate.
int cmd_optimizer_lr(Registry& registry, Tcl_Interp* interp, int objc,
                     Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kLr, objc, objv, args) != TCL_OK) return TCL_ERROR;
  std::shared_ptr<OptimizerEntry> opt;
  if (!registry.get(interp, args.obj("optimizer"), opt)) return TCL_ERROR;
  auto& groups = opt->optimizer->param_groups();
  if (args.has("lr")) {
    for (auto& g : groups) g.options().set_lr(args.number("lr"));
  }
  Tcl_SetObjResult(interp, Tcl_NewDoubleObj(groups.front().options().get_lr()));
  return TCL_OK;
}

// ------------------------------------------------------------ state, files

// Written into files by torch::optimizer_save next to LibTorch's own keys.
constexpr const char* kKindKey = "tcltorch_optimizer";

Tcl_Obj* shape_list(at::IntArrayRef sizes) {
  Tcl_Obj* list = Tcl_NewListObj(0, nullptr);
  for (auto d : sizes) Tcl_ListObjAppendElement(nullptr, list, Tcl_NewWideIntObj(d));
  return list;
}

void dict_put(Tcl_Obj* dict, const char* key, Tcl_Obj* value) {
  Tcl_DictObjPut(nullptr, dict, Tcl_NewStringObj(key, -1), value);
}

std::int64_t bytes_of(const at::Tensor& t) {
  return static_cast<std::int64_t>(t.numel()) * static_cast<std::int64_t>(t.element_size());
}

const CommandSpec kState{"torch::optimizer_state", {
    {.name = "optimizer", .required = true, .placeholder = "optimizer"},
}};

// A dict: the optimizer's type, one entry per parameter (by tensor handle:
// shape, step, state tensors with shape/dtype/bytes, state bytes), and the
// totals, with what Adam would keep for the same parameters.
int cmd_optimizer_state(Registry& registry, Tcl_Interp* interp, int objc,
                        Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kState, objc, objv, args) != TCL_OK) return TCL_ERROR;
  std::shared_ptr<OptimizerEntry> opt;
  if (!registry.get(interp, args.obj("optimizer"), opt)) return TCL_ERROR;
  Tcl_Obj* params = Tcl_NewDictObj();
  std::int64_t state_total = 0, param_total = 0;
  const auto& states = opt->optimizer->state();
  for (const auto& group : opt->optimizer->param_groups()) {
    for (const auto& p : group.params()) {
      Tcl_Obj* entry = Tcl_NewDictObj();
      dict_put(entry, "shape", shape_list(p.sizes()));
      Tcl_Obj* tensors = Tcl_NewDictObj();
      std::int64_t bytes = 0;
      double step = 0;
      auto it = states.find(p.unsafeGetTensorImpl());
      if (it != states.end()) {
        for (const auto& [name, t] : optimizer_state_tensors(*it->second, step)) {
          Tcl_Obj* info = Tcl_NewDictObj();
          dict_put(info, "shape", shape_list(t.sizes()));
          dict_put(info, "dtype", Tcl_NewStringObj(dtype_name(t.scalar_type()), -1));
          dict_put(info, "bytes", Tcl_NewWideIntObj(bytes_of(t)));
          dict_put(tensors, name.c_str(), info);
          bytes += bytes_of(t);
        }
      }
      dict_put(entry, "step", Tcl_NewWideIntObj(static_cast<Tcl_WideInt>(step)));
      dict_put(entry, "state", tensors);
      dict_put(entry, "bytes", Tcl_NewWideIntObj(bytes));
      state_total += bytes;
      param_total += bytes_of(p);
      dict_put(params, registry.add(p).c_str(), entry);
    }
  }
  Tcl_Obj* result = Tcl_NewDictObj();
  dict_put(result, "type", Tcl_NewStringObj(opt->type.c_str(), -1));
  dict_put(result, "parameters", params);
  dict_put(result, "state_bytes", Tcl_NewWideIntObj(state_total));
  dict_put(result, "parameter_bytes", Tcl_NewWideIntObj(param_total));
  // Adam keeps exp_avg and exp_avg_sq, each the size of the parameters.
  dict_put(result, "adam_state_bytes", Tcl_NewWideIntObj(2 * param_total));
  if (auto* ada = dynamic_cast<const Adafactor*>(opt->optimizer.get())) {
    dict_put(result, "skipped_updates", Tcl_NewWideIntObj(ada->skipped_updates()));
  }
  Tcl_SetObjResult(interp, result);
  return TCL_OK;
}

CommandSpec file_spec(const char* name) {
  return {name, {
      {.name = "optimizer", .required = true, .placeholder = "optimizer"},
      {.name = "file", .type = ArgType::String, .required = true, .placeholder = "file"},
  }};
}
const CommandSpec kSave = file_spec("torch::optimizer_save");
const CommandSpec kLoad = file_spec("torch::optimizer_load");

int cmd_optimizer_save(Registry& registry, Tcl_Interp* interp, int objc,
                       Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kSave, objc, objv, args) != TCL_OK) return TCL_ERROR;
  std::shared_ptr<OptimizerEntry> opt;
  if (!registry.get(interp, args.obj("optimizer"), opt)) return TCL_ERROR;
  const std::string file = args.str("file");
  try {
    tcltorch::write_atomically(file, [&](const std::string& tmp) {
      torch::serialize::OutputArchive archive;
      opt->optimizer->save(archive);
      // Which optimizer wrote the file, for a clear error on loading it
      // into another kind.
      archive.write(kKindKey, c10::IValue(opt->type));
      archive.save_to(tmp);
    });
  } catch (const distributed::Error& e) {
    // The collective of a sharded optimizer's save (a peer gone, a timeout).
    return fail(interp, "cannot save optimizer to \"" + file + "\": " + e.what(),
                {"TORCH", "DISTRIBUTED", e.code()});
  } catch (const c10::Error& e) {
    return fail(interp, "cannot save optimizer to \"" + file + "\": " + e.what_without_backtrace(),
                {"TORCH", "FILE", file});
  } catch (const std::runtime_error& e) {
    return fail(interp, "cannot save optimizer to \"" + file + "\": " + e.what(),
                {"TORCH", "FILE", file});
  }
  return ok(interp, "");
}

// Every state tensor of a loaded optimizer must fit its parameter.
// Loads into a fresh optimizer first: a missing, truncated, corrupted,
// wrong-kind or wrong-shape file leaves the live optimizer untouched.
int cmd_optimizer_load(Registry& registry, Tcl_Interp* interp, int objc,
                       Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kLoad, objc, objv, args) != TCL_OK) return TCL_ERROR;
  std::shared_ptr<OptimizerEntry> opt;
  if (!registry.get(interp, args.obj("optimizer"), opt)) return TCL_ERROR;
  const std::string file = args.str("file");
  std::unique_ptr<torch::optim::Optimizer> fresh;
  std::optional<std::string> error;  // why this rank cannot load the file
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(file);
    c10::IValue kind;
    if (archive.try_read(kKindKey, kind) && kind.isString() && kind.toStringRef() != opt->type) {
      error = "the file holds " + with_article(kind.toStringRef()) + " optimizer";
    } else {
      fresh = opt->make_fresh();
      fresh->load(archive);
      check_loaded_state(*fresh);
    }
  } catch (const c10::Error& e) {
    error = e.what_without_backtrace();
  } catch (const std::exception& e) {
    error = e.what();
  }
  const std::string what = "cannot load " + opt->type + " optimizer from \"" + file + "\": ";
  // A sharded optimizer loads on every rank or on none (collective).
  if (sharded_load_agreed(interp, *opt->optimizer, what, error) != TCL_OK) return TCL_ERROR;
  if (error) {
    return fail(interp, what + *error,
                {"TORCH", "FILE", file});
  }
  // The step in backward is not in the file: the loaded copy takes it over,
  // with the count of an accumulation in progress.
  auto* live = dynamic_cast<Adafactor*>(opt->optimizer.get());
  if (live && live->step_in_backward()) {
    static_cast<Adafactor&>(*fresh).take_step_in_backward(*live);
  }
  opt->optimizer = std::move(fresh);
  return ok(interp, "");
}

}  // namespace

const std::vector<CommandDef>& optimizer_commands() {
  static const std::vector<CommandDef> table = {
      {"torch::optimizer_adafactor", cmd_optimizer_adafactor},
      {"torch::optimizerAdafactor", cmd_optimizer_adafactor_alias},
      {"torch::optimizer_adam", cmd_optimizer_adam},
      {"torch::optimizer_adamw", cmd_optimizer_adamw},
      {"torch::optimizer_sgd", cmd_optimizer_sgd},
      {"torch::optimizer_step", cmd_optimizer_step},
      {"torch::optimizer_state", cmd_optimizer_state},
      {"torch::optimizer_save", cmd_optimizer_save},
      {"torch::optimizer_load", cmd_optimizer_load},
      {"torch::optimizer_zero_grad", cmd_optimizer_zero_grad},
      {"torch::optimizer_lr", cmd_optimizer_lr},
  };
  return table;
}

}  // namespace tcltorch::tcl
