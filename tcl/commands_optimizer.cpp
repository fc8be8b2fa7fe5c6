// Optimizer commands: torch::optimizer_adafactor and the commands that drive
// any optimizer handle. The Tcl layer only translates arguments: the
// algorithm is tcltorch::Adafactor in csrc/.
#include <torch/optim/optimizer.h>

#include <unordered_set>

#include "argspec.h"
#include "commands.h"
#include "errors.h"
#include "objects.h"
#include "tcltorch/adafactor.h"

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
  auto take = [&](const at::Tensor& t, const std::string& from) {
    if (!t.is_floating_point()) {
      return bad_value(interp, "parameters", value,
                       from + " is not a floating-point tensor");
    }
    if (!t.is_leaf()) {
      return bad_value(interp, "parameters", value,
                       from + " is not a leaf tensor (it was computed from others)");
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
  return TCL_OK;
}

int optimizer_result(Registry& registry, Tcl_Interp* interp, std::string type,
                     std::unique_ptr<torch::optim::Optimizer> optimizer) {
  return ok(interp, registry.add(std::make_shared<OptimizerEntry>(
                        OptimizerEntry{std::move(type), std::move(optimizer)})));
}

// ------------------------------------------------------------ Adafactor

const NumberRule kBeta1{[](double v) { return v == -1.0 || (v >= 0 && v < 1); },
                        "-1 (no momentum) or in [0, 1)"};
const char* const kVariants[] = {"transformers", "torch", nullptr};
const char* const kFactoredDimsNames[] = {"last_two", "largest_two", nullptr};

// The seed page's options first, in its positional order and with its
// defaults; the rest of the core's options are named-only.
CommandSpec adafactor_spec(const char* name) {
  return {name, {
      {.name = "parameters", .required = true, .placeholder = "tensorsOrModule"},
      {.name = "lr", .type = ArgType::Double, .default_value = "0.8",
       .rule = kNonNegative},
      {.name = "eps2", .type = ArgType::Double, .default_value = "1e-30",
       .rule = kNonNegative},
      {.name = "clipThreshold", .snake = "clip_threshold", .type = ArgType::Double,
       .default_value = "1.0", .rule = kPositive},
      {.name = "decayRate", .snake = "decay_rate", .type = ArgType::Double,
       .default_value = "-1.0"},
      {.name = "beta1", .type = ArgType::Double, .default_value = "-1.0",
       .rule = kBeta1},
      {.name = "weightDecay", .snake = "weight_decay", .type = ArgType::Double,
       .default_value = "0.0", .rule = kNonNegative},
      {.name = "relativeStep", .snake = "relative_step", .type = ArgType::Bool,
       .default_value = "1", .placeholder = "bool", .positional = false},
      {.name = "scaleParameter", .snake = "scale_parameter", .type = ArgType::Bool,
       .default_value = "1", .placeholder = "bool", .positional = false},
      {.name = "warmupInit", .snake = "warmup_init", .type = ArgType::Bool,
       .default_value = "0", .placeholder = "bool", .positional = false},
      {.name = "epsScale", .snake = "eps_scale", .type = ArgType::Double,
       .default_value = "1e-3", .rule = kNonNegative, .positional = false},
      {.name = "maximize", .type = ArgType::Bool, .default_value = "0",
       .placeholder = "bool", .positional = false},
      {.name = "variant", .type = ArgType::String, .default_value = "transformers",
       .placeholder = "variant", .choices = kVariants, .positional = false},
      {.name = "factoredDims", .snake = "factored_dims", .type = ArgType::String,
       .default_value = "last_two", .placeholder = "rule",
       .choices = kFactoredDimsNames, .positional = false},
      {.name = "minDimSizeToFactor", .snake = "min_dim_size_to_factor",
       .type = ArgType::Int, .default_value = "0", .placeholder = "int",
       .rule = kNonNegative, .positional = false},
      {.name = "fp32State", .snake = "fp32_state", .type = ArgType::Bool,
       .default_value = "0", .placeholder = "bool", .positional = false},
      {.name = "stochasticRounding", .snake = "stochastic_rounding",
       .type = ArgType::Bool, .default_value = "0", .placeholder = "bool",
       .positional = false},
  }};
}
const CommandSpec kAdafactor = adafactor_spec("torch::optimizer_adafactor");
const CommandSpec kAdafactorAlias = adafactor_spec("torch::optimizerAdafactor");

// -decayRate: -1 is the default schedule 1 - t^-0.8; a positive c means
// 1 - t^-c; any other negative x means 1 - t^x.
double beta2_decay_of(double decay_rate) {
  if (decay_rate == -1.0) return -0.8;
  return decay_rate > 0 ? -decay_rate : decay_rate;
}

int adafactor(const CommandSpec& spec, Registry& registry, Tcl_Interp* interp,
              int objc, Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, spec, objc, objv, args) != TCL_OK) return TCL_ERROR;
  if (args.flag("warmupInit") && !args.flag("relativeStep")) {
    return bad_value(interp, "warmupInit", args.obj("warmupInit"),
                     "needs -relativeStep true (warm-up ramps the relative step)");
  }
  std::vector<at::Tensor> params;
  if (collect_parameters(registry, interp, args.obj("parameters"), params) != TCL_OK) {
    return TCL_ERROR;
  }
  AdafactorOptions options(args.number("lr"));
  options.eps1(args.number("eps2"))
      .eps2(args.number("epsScale"))
      .d(args.number("clipThreshold"))
      .beta2_decay(beta2_decay_of(args.number("decayRate")))
      .weight_decay(args.number("weightDecay"))
      .relative_step(args.flag("relativeStep"))
      .scale_parameter(args.flag("scaleParameter"))
      .warmup_init(args.flag("warmupInit"))
      .maximize(args.flag("maximize"))
      .variant(parse_variant(args.str("variant")))
      .factored_dims(parse_factored_dims(args.str("factoredDims")))
      .min_dim_size_to_factor(args.integer("minDimSizeToFactor"))
      .fp32_state(args.flag("fp32State"))
      .stochastic_rounding(args.flag("stochasticRounding"));
  if (args.number("beta1") != -1.0) options.beta1(args.number("beta1"));
  return optimizer_result(registry, interp, "adafactor",
                          std::make_unique<Adafactor>(std::move(params), options));
}

int cmd_optimizer_adafactor(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) {
  return adafactor(kAdafactor, r, i, c, v);
}
int cmd_optimizer_adafactor_alias(Registry& r, Tcl_Interp* i, int c, Tcl_Obj* const v[]) {
  return adafactor(kAdafactorAlias, r, i, c, v);
}

// ------------------------------------------------------------ any optimizer

const CommandSpec kStep{"torch::optimizer_step", {
    {.name = "optimizer", .required = true, .placeholder = "optimizer"},
}};

int cmd_optimizer_step(Registry& registry, Tcl_Interp* interp, int objc,
                       Tcl_Obj* const objv[]) {
  Args args;
  if (parse_args(interp, kStep, objc, objv, args) != TCL_OK) return TCL_ERROR;
  std::shared_ptr<OptimizerEntry> opt;
  if (!registry.get(interp, args.obj("optimizer"), opt)) return TCL_ERROR;
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

}  // namespace

const std::vector<CommandDef>& optimizer_commands() {
  static const std::vector<CommandDef> table = {
      {"torch::optimizer_adafactor", cmd_optimizer_adafactor},
      {"torch::optimizerAdafactor", cmd_optimizer_adafactor_alias},
      {"torch::optimizer_step", cmd_optimizer_step},
      {"torch::optimizer_zero_grad", cmd_optimizer_zero_grad},
      {"torch::optimizer_lr", cmd_optimizer_lr},
  };
  return table;
}

}  // namespace tcltorch::tcl
