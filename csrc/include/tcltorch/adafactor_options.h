// The one table of tcltorch::Adafactor's options. Every door reads it: the
// C++ struct's fields, validate() and serialize() (csrc/adafactor.cpp), the
// Tcl argument table of torch::optimizer_adafactor (tcl/adafactor_args.cpp),
// the Python keywords, group defaults and group keys (python/src/module.cpp,
// python/tcltorch/optim.py) and the docs' option tables
// (scripts/adafactor_option_docs.py, checked by tests/test_option_table.py).
//
// No LibTorch here: the Tcl layer and tools read this header cheaply.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include "tcltorch/export.h"

namespace tcltorch {

// Where eps1 enters and how weight decay is scaled; see docs/algorithm.md.
enum class AdafactorVariant : std::int8_t {
  Torch,         // torch.optim.Adafactor: eps1 clamps V, decay scaled by lr
  Transformers,  // the paper / transformers / fairseq: eps1 added to G^2,
                 // decay scaled by the per-step lr_t
  BigVision,     // big_vision / timm's AdafactorBigVision: eps1 added to G^2,
                 // momentum averages the unscaled clipped update, the step
                 // size multiplies afterwards
};
// Names of an enum option, indexed by its value.
inline constexpr const char* kAdafactorVariantNames[] = {"torch", "transformers", "big_vision",
                                                         nullptr};
inline constexpr std::size_t kAdafactorVariantCount = 3;

// Which two dimensions of a >= 2-D parameter carry the row/column factors.
enum class FactoredDims : std::int8_t {
  LastTwo,     // torch, transformers: dims -2 and -1
  LargestTwo,  // optax, t5x: the two largest dims (ties: the later ones)
  LeadingTwo,  // timm: dims 0 and 1 of a > 2-D weight when both pass the
               // size rule, else the last two
};
inline constexpr const char* kFactoredDimsNames[] = {"last_two", "largest_two", "leading_two",
                                                     nullptr};

// How weight decay scales; the decoupled decay is param *= 1 - c.
enum class WeightDecayMode : std::int8_t {
  Lr,         // c = lr * weight_decay (torch, big_vision)
  LrT,        // c = lr_t * weight_decay, this step's size (transformers)
  Unscaled,   // c = weight_decay (optax, big_vision unscaled_wd, fixed_decay)
  Corrected,  // c = weight_decay * lr^2 / max_lr (timm corrected_weight_decay)
  Coupled,    // L2: G += weight_decay * param before everything
};
inline constexpr const char* kWeightDecayModeNames[] = {"lr", "lr_t", "unscaled", "corrected",
                                                        "coupled", nullptr};

// The dtype of exp_avg: the state's, or bfloat16 whatever the parameter's.
enum class MomentumDtype : std::int8_t { None, BFloat16 };
inline constexpr const char* kMomentumDtypeNames[] = {"none", "bfloat16", nullptr};

enum class OptionType : std::int8_t {
  Double,          // a finite number
  OptionalDouble,  // a finite number, or unset (None in Python)
  Bool,
  Int,             // std::int64_t
  Enum,            // one of `choices`; the C++ field is the enum type
};

// For tools and the Python door's table.
constexpr const char* type_name(OptionType type) {
  switch (type) {
    case OptionType::Double: return "double";
    case OptionType::OptionalDouble: return "optional_double";
    case OptionType::Bool: return "bool";
    case OptionType::Int: return "int";
    case OptionType::Enum: return "enum";
  }
  return "";
}

// The range of a number; rule_text completes "must be ...". A new rule is a
// value here and a case in each of the three functions below; the doors
// take it from them.
enum class OptionRule : std::int8_t {
  Any,
  NonNegative,       // >= 0
  Positive,          // > 0
  NonPositive,       // <= 0
  UnitIntervalOpen,  // in [0, 1)
  AtLeastOne,        // >= 1
  Count_,            // the number of rules, not a rule
};
inline constexpr std::size_t kOptionRuleCount = static_cast<std::size_t>(OptionRule::Count_);

// For tools and the Python door's table.
constexpr const char* rule_name(OptionRule rule) {
  switch (rule) {
    case OptionRule::Any: return "any";
    case OptionRule::NonNegative: return "non_negative";
    case OptionRule::Positive: return "positive";
    case OptionRule::NonPositive: return "non_positive";
    case OptionRule::UnitIntervalOpen: return "unit_interval_open";
    case OptionRule::AtLeastOne: return "at_least_one";
    case OptionRule::Count_: break;
  }
  return "";
}

constexpr bool rule_accepts(OptionRule rule, double v) {
  switch (rule) {
    case OptionRule::Any: return true;
    case OptionRule::NonNegative: return v >= 0;
    case OptionRule::Positive: return v > 0;
    case OptionRule::NonPositive: return v <= 0;
    case OptionRule::UnitIntervalOpen: return v >= 0 && v < 1;
    case OptionRule::AtLeastOne: return v >= 1;
    case OptionRule::Count_: break;
  }
  return false;
}

constexpr const char* rule_text(OptionRule rule) {
  switch (rule) {
    case OptionRule::Any: return "a number";
    case OptionRule::NonNegative: return ">= 0";
    case OptionRule::Positive: return "> 0";
    case OptionRule::NonPositive: return "<= 0";
    case OptionRule::UnitIntervalOpen: return "in [0, 1)";
    case OptionRule::AtLeastOne: return ">= 1";
    case OptionRule::Count_: break;
  }
  return "";
}

// How the Tcl command spells an option whose Tcl form is not the core's value.
enum class TclForm : std::int8_t {
  Plain,      // the core's value
  DecayRate,  // -decayRate: -1 means -0.8, c > 0 means -c, other x mean x
};

// One option. Text fields are plain C strings so that the table is constexpr.
struct AdafactorOptionInfo {
  const char* name;  // C++ field and setter, Python keyword and group key, archive key
  OptionType type = OptionType::Double;
  const char* tcl = nullptr;  // camelCase Tcl option (no dash); snake_case is derived
  // The default per variant (indexed by AdafactorVariant) as text: a number,
  // "true"/"false", a choice, or "none" (unset). nullptr: as for Torch.
  const char* defaults[kAdafactorVariantCount] = {};
  OptionRule rule = OptionRule::Any;
  // One line for the docs; {name} is rendered as each door spells that
  // option (-tclName in Tcl, name in Python and C++).
  const char* doc = "";
  const char* none_doc = nullptr;        // OptionalDouble: what unset means
  const char* const* choices = nullptr;  // Enum: names indexed by value
  // Tcl door.
  bool tcl_positional = false;         // in the legacy positional form (rows in order)
  const char* tcl_default = nullptr;   // the Tcl command's own default, for every variant
  bool tcl_minus_one_unsets = false;   // OptionalDouble: Tcl spells unset as -1
  TclForm tcl_form = TclForm::Plain;
  // torch.optim.Adafactor checks this option: the name its messages use, its
  // rule when it differs from `rule`, and the place of the check in torch's
  // order (1 first). tcltorch.Adafactor with variant="torch" raises torch's
  // ValueError for them.
  const char* torch_name = nullptr;
  std::optional<OptionRule> torch_rule = std::nullopt;
  int torch_order = 0;
};

// ---------------------------------------------------------------------------
// THE TABLE. To add an option: add one row here (C++ type, field name, then
// the descriptor fields above, in their declared order; rows may leave out
// fields that keep their defaults), and use
// `options.<field>()` in the kernel (csrc/adafactor_step.cpp and the fused
// kernel). The struct field and setter, validation and its messages,
// checkpoints (old files without the key keep the default), the Tcl option,
// the Python keyword and group key and the docs' tables follow; rerun
// `python scripts/adafactor_option_docs.py` to refresh the docs. An enum
// option needs its C++ enum and a names array as above; a new range rule, a
// value of OptionRule and its cases; a new variant, a value of
// AdafactorVariant, its name and kAdafactorVariantCount (rows whose default
// differs under it list it in .defaults). A rule between options (e.g.
// warmup_init needs relative_step) goes in AdafactorOptions::validate(); a
// new OptionType needs a conversion in each door.
//
// Rows are in the Tcl command's order: its legacy positional options first.
// ---------------------------------------------------------------------------
// X(C++ type, field, descriptor fields...)
#define TCLTORCH_ADAFACTOR_OPTIONS(X)                                                       \
  X(double, lr, .type = OptionType::Double, .tcl = "lr", .defaults = {"1e-2", nullptr, "1.0"}, \
    .rule = OptionRule::NonNegative,                                                        \
    .doc = "with {relative_step}, the cap of the relative step "                            \
           "rho_t = min({lr}, 1/sqrt(t)); without it, the step size itself",                \
    .tcl_positional = true, .tcl_default = "0.8", .torch_name = "Learning rate",            \
    .torch_order = 1)                                                                       \
  X(std::optional<double>, eps1, .type = OptionType::OptionalDouble, .tcl = "eps2",         \
    .defaults = {"none", "1e-30", "1e-30"}, .rule = OptionRule::NonNegative,                \
    .doc = "the regulariser of the second moment (the paper's epsilon1): "                  \
           "a floor on V (torch) or added to G^2 (transformers)",                           \
    .none_doc = "finfo(dtype).eps of each parameter (torch), 1e-30 (transformers)",         \
    .tcl_positional = true, .torch_name = "epsilon1", .torch_order = 3)                     \
  X(std::optional<double>, d, .type = OptionType::OptionalDouble, .tcl = "clipThreshold",   \
    .defaults = {"1.0", nullptr, "none"}, .rule = OptionRule::Positive,                     \
    .doc = "the clip threshold: the update is divided by max(1, RMS(update) / {d})",        \
    .none_doc = "no clipping", .tcl_positional = true, .tcl_minus_one_unsets = true,        \
    .torch_name = "Clipping threshold d",                                                   \
    .torch_rule = OptionRule::AtLeastOne, .torch_order = 5)                                 \
  X(double, beta2_decay, .type = OptionType::Double, .tcl = "decayRate",                    \
    .defaults = {"-0.8"}, .rule = OptionRule::NonPositive,                                  \
    .doc = "the second-moment decay: beta2_t = 1 - t^beta2_decay",                          \
    .tcl_positional = true, .tcl_default = "-1.0", .tcl_form = TclForm::DecayRate,          \
    .torch_name = "beta2_decay", .torch_order = 2)                                          \
  X(std::optional<double>, beta1, .type = OptionType::OptionalDouble, .tcl = "beta1",       \
    .defaults = {"none", nullptr, "0.9"}, .rule = OptionRule::UnitIntervalOpen,             \
    .doc = "momentum on the scaled, clipped update (big_vision: the unscaled one; "         \
           "state exp_avg)",                                                                \
    .none_doc = "no momentum", .tcl_positional = true, .tcl_minus_one_unsets = true)        \
  X(double, weight_decay, .type = OptionType::Double, .tcl = "weightDecay",                 \
    .defaults = {"0.0"}, .rule = OptionRule::NonNegative,                                   \
    .doc = "weight decay, scaled as {weight_decay_mode} says; by default "                   \
           "param *= 1 - {weight_decay} * {lr} (torch, big_vision) "                        \
           "or * lr_t, this step's step size (transformers)",                               \
    .tcl_positional = true, .torch_name = "weight_decay", .torch_order = 6)                 \
  X(bool, relative_step, .type = OptionType::Bool, .tcl = "relativeStep",                   \
    .defaults = {"true", nullptr, "false"}, .doc = "steps relative to 1/sqrt(t); see {lr}") \
  X(bool, scale_parameter, .type = OptionType::Bool, .tcl = "scaleParameter",               \
    .defaults = {"true", nullptr, "false"},                                                 \
    .doc = "multiply the step size by max({eps2}, RMS(param))")                             \
  X(bool, warmup_init, .type = OptionType::Bool, .tcl = "warmupInit",                       \
    .defaults = {"false"},                                                                  \
    .doc = "with {relative_step}, the cap of rho_t becomes 1e-6 * t instead of {lr}")       \
  X(double, eps2, .type = OptionType::Double, .tcl = "epsScale", .defaults = {"1e-3"},      \
    .rule = OptionRule::NonNegative,                                                        \
    .doc = "the floor of RMS(param) in the parameter scale (the paper's epsilon2)",         \
    .torch_name = "epsilon2", .torch_order = 4)                                             \
  X(bool, maximize, .type = OptionType::Bool, .tcl = "maximize", .defaults = {"false"},     \
    .doc = "maximise the objective instead of minimising it")                               \
  X(AdafactorVariant, variant, .type = OptionType::Enum, .tcl = "variant",                  \
    .defaults = {"torch", "transformers", "big_vision"},                                    \
    .doc = "torch: exactly torch.optim.Adafactor; transformers: the paper's "               \
           "algorithm (transformers, fairseq); big_vision: timm's AdafactorBigVision "      \
           "(momentum on the unscaled update); the other options' defaults follow it",      \
    .choices = kAdafactorVariantNames, .tcl_default = "transformers")                       \
  X(FactoredDims, factored_dims, .type = OptionType::Enum, .tcl = "factoredDims",           \
    .defaults = {"last_two", nullptr, "largest_two"},                                       \
    .doc = "which two dims carry the row/column factors: the last two, the "                \
           "two largest (optax, t5x), or dims 0 and 1 of a > 2-D weight when both "         \
           "pass the size rule, else the last two (leading_two, timm)",                     \
    .choices = kFactoredDimsNames)                                                          \
  X(std::int64_t, min_dim_size_to_factor, .type = OptionType::Int,                          \
    .tcl = "minDimSizeToFactor", .defaults = {"0", nullptr, "16"},                          \
    .rule = OptionRule::NonNegative,                                                        \
    .doc = "factor only when both factored dims are at least this long; "                   \
           "0 factors every parameter of two or more dims")                                 \
  X(bool, fp32_state, .type = OptionType::Bool, .tcl = "fp32State",                         \
    .defaults = {"false"},                                                                  \
    .doc = "keep fp32 state for bfloat16/float16 parameters (else the "                     \
           "gradient's dtype, as torch)")                                                   \
  X(bool, stochastic_rounding, .type = OptionType::Bool, .tcl = "stochasticRounding",       \
    .defaults = {"false"},                                                                  \
    .doc = "write bfloat16 parameters back with stochastic rounding")                       \
  X(bool, skip_nan_updates, .type = OptionType::Bool, .tcl = "skipNonFinite",               \
    .defaults = {"false"},                                                                  \
    .doc = "a gradient with an Inf or NaN leaves its parameter and state "                  \
           "(step included) unchanged and the skip is counted (skipped_updates); "          \
           "off, non-finite values flow into the update as in torch.optim.Adafactor")      \
  X(std::optional<double>, beta2_cap, .type = OptionType::OptionalDouble, .tcl = "beta2Cap", \
    .defaults = {"none", nullptr, "0.999"}, .rule = OptionRule::UnitIntervalOpen,           \
    .doc = "a cap on the second-moment decay: beta2_t = min(1 - s^beta2_decay, cap)",       \
    .none_doc = "no cap", .tcl_minus_one_unsets = true)                                     \
  X(std::int64_t, decay_offset, .type = OptionType::Int, .tcl = "decayOffset",              \
    .defaults = {"0"}, .rule = OptionRule::NonNegative,                                     \
    .doc = "the second-moment schedule restarts here: s = max(t - decay_offset, 1) "        \
           "in beta2_t (fine-tuning, as big_vision and optax)")                             \
  X(bool, caution, .type = OptionType::Bool, .tcl = "caution", .defaults = {"false"},       \
    .doc = "with {beta1}: zero the update where its sign disagrees with the gradient, "     \
           "rescaled by the kept fraction (timm's cautious mask)")                          \
  X(WeightDecayMode, weight_decay_mode, .type = OptionType::Enum, .tcl = "weightDecayMode", \
    .defaults = {"lr", "lr_t", "lr"},                                                       \
    .doc = "how {weight_decay} scales: lr, lr_t (this step's size), unscaled, "             \
           "corrected (lr^2 / {max_lr}) or coupled (L2, added to the gradient)",            \
    .choices = kWeightDecayModeNames)                                                       \
  X(std::optional<double>, max_lr, .type = OptionType::OptionalDouble, .tcl = "maxLr",      \
    .defaults = {"none"}, .rule = OptionRule::Positive,                                     \
    .doc = "the lr that corrected weight decay divides by",                                 \
    .none_doc = "the lr when the optimizer is built (schedules change lr later)",           \
    .tcl_minus_one_unsets = true)                                                           \
  X(MomentumDtype, momentum_dtype, .type = OptionType::Enum, .tcl = "momentumDtype",        \
    .defaults = {"none", nullptr, "bfloat16"},                                              \
    .doc = "bfloat16: exp_avg in bfloat16, rounded to nearest as torch's ops round; "       \
           "none: the state's dtype",                                                       \
    .choices = kMomentumDtypeNames)                                                         \
  X(bool, momentum_stochastic_rounding, .type = OptionType::Bool,                           \
    .tcl = "momentumStochasticRounding", .defaults = {"false"},                             \
    .doc = "round the bfloat16 momentum stochastically instead")                           \
  /* every row ends with a backslash: a new row goes above this line */

#define TCLTORCH_ADAFACTOR_OPTION_INFO(ctype, field, ...) \
  AdafactorOptionInfo{.name = #field, __VA_ARGS__},

inline constexpr AdafactorOptionInfo kAdafactorOptionTable[] = {
    TCLTORCH_ADAFACTOR_OPTIONS(TCLTORCH_ADAFACTOR_OPTION_INFO)};
#undef TCLTORCH_ADAFACTOR_OPTION_INFO

inline constexpr std::size_t kAdafactorOptionCount =
    sizeof(kAdafactorOptionTable) / sizeof(kAdafactorOptionTable[0]);

// The option called `name` (its C++/Python name), or nullptr.
constexpr const AdafactorOptionInfo* find_adafactor_option(std::string_view name) {
  for (const auto& info : kAdafactorOptionTable) {
    if (name == info.name) return &info;
  }
  return nullptr;
}

// The text of the option's default under `variant`.
constexpr const char* default_text(const AdafactorOptionInfo& info,
                                   AdafactorVariant variant) {
  const char* text = info.defaults[static_cast<std::size_t>(variant)];
  return text ? text : info.defaults[0];
}

// A value of any option, as the doors pass it: monostate is unset
// (OptionalDouble only), an Enum travels by name.
using OptionValue = std::variant<std::monostate, double, bool, std::int64_t, std::string>;

struct AdafactorOptions;

// The default of an option as a value. Throws c10::ValueError on a bad table.
TCLTORCH_API OptionValue adafactor_option_default(const AdafactorOptionInfo& info,
                                                  AdafactorVariant variant);
// Sets one option; throws c10::ValueError when the value has the wrong type
// or names no choice (ranges are checked by AdafactorOptions::validate()).
TCLTORCH_API void set_adafactor_option(AdafactorOptions& options,
                                       const AdafactorOptionInfo& info,
                                       const OptionValue& value);
TCLTORCH_API OptionValue get_adafactor_option(const AdafactorOptions& options,
                                              const AdafactorOptionInfo& info);
// "1e-30", "none", "true", "last_two": the value as the table writes defaults.
TCLTORCH_API std::string option_value_text(const OptionValue& value);

}  // namespace tcltorch
