// The optimizer object around adafactor_step: options, state, serialization.
// Shaped after LibTorch's torch/csrc/api/src/optim/adam.cpp.
#include "tcltorch/adafactor.h"
#include "tcltorch/step_in_backward.h"

#include <torch/serialize/archive.h>
#include <torch/utils.h>

#include <c10/util/Exception.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <sstream>
#include <type_traits>
#include <vector>

namespace tcltorch {

namespace {

template <typename Enum>
const char* enum_name(const char* const* names, Enum value) {
  return names[static_cast<std::size_t>(value)];
}

// The index of `name` in a nullptr-terminated list; throws c10::ValueError
// naming the option and the choices otherwise.
std::size_t choice_index(const char* option, const char* const* names,
                         const std::string& name) {
  std::ostringstream allowed;
  std::size_t n = 0;
  for (; names[n]; ++n) {
    if (name == names[n]) return n;
  }
  for (std::size_t i = 0; i < n; ++i) {
    allowed << (i == 0 ? "" : (i + 1 == n ? " or " : ", ")) << '"' << names[i] << '"';
  }
  TORCH_CHECK_VALUE(false, option, " must be ", allowed.str(), ", got \"", name, "\"");
}

// The text Python's repr gives a float ("0.0", "0.0001", "1e-05", "1e+16"),
// for torch's messages: the shortest digits that read back as `v`, in fixed
// notation for decimal exponents -4 .. 15, else in scientific notation.
std::string python_repr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[400];
  auto sci = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string text(buf, sci.ptr);
  const int exponent = std::stoi(text.substr(text.find('e') + 1));
  if (exponent < -4 || exponent >= 16) return text;
  auto fixed = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed);
  text.assign(buf, fixed.ptr);
  if (text.find('.') == std::string::npos) text += ".0";
  return text;
}

const char* type_words(OptionType type) {
  switch (type) {
    case OptionType::Double: return "a number";
    case OptionType::OptionalDouble: return "a number or unset";
    case OptionType::Bool: return "a boolean";
    case OptionType::Int: return "an integer";
    case OptionType::Enum: return "a name";
  }
  return "";
}

[[noreturn]] void wrong_type(const AdafactorOptionInfo& info) {
  TORCH_CHECK_VALUE(false, info.name, " must be ", type_words(info.type));
}

template <typename T>
const T& value_as(const AdafactorOptionInfo& info, const OptionValue& value) {
  if (const T* v = std::get_if<T>(&value)) return *v;
  wrong_type(info);
}

// Field access by descriptor, generated from the table: one case per row.
template <typename T>
void assign(const AdafactorOptionInfo& info, const OptionValue& value, T& field) {
  if constexpr (std::is_same_v<T, std::optional<double>>) {
    if (std::holds_alternative<std::monostate>(value)) {
      field = std::nullopt;
    } else {
      field = value_as<double>(info, value);
    }
  } else if constexpr (std::is_enum_v<T>) {
    field = static_cast<T>(choice_index(info.name, info.choices,
                                        value_as<std::string>(info, value)));
  } else {
    field = value_as<T>(info, value);
  }
}

template <typename T>
OptionValue value_of(const AdafactorOptionInfo& info, const T& field) {
  if constexpr (std::is_same_v<T, std::optional<double>>) {
    return field ? OptionValue(*field) : OptionValue();
  } else if constexpr (std::is_enum_v<T>) {
    return std::string(enum_name(info.choices, field));
  } else {
    return field;
  }
}

}  // namespace

const char* to_string(AdafactorVariant v) { return enum_name(kAdafactorVariantNames, v); }
const char* to_string(FactoredDims f) { return enum_name(kFactoredDimsNames, f); }

AdafactorVariant parse_variant(const std::string& name) {
  return static_cast<AdafactorVariant>(choice_index("variant", kAdafactorVariantNames, name));
}

FactoredDims parse_factored_dims(const std::string& name) {
  return static_cast<FactoredDims>(choice_index("factored_dims", kFactoredDimsNames, name));
}

OptionValue adafactor_option_default(const AdafactorOptionInfo& info,
                                     AdafactorVariant variant) {
  const std::string text = default_text(info, variant);
  switch (info.type) {
    case OptionType::OptionalDouble:
      if (text == "none") return {};
      [[fallthrough]];
    case OptionType::Double:
      return std::stod(text);
    case OptionType::Bool:
      TORCH_CHECK_VALUE(text == "true" || text == "false", "bad default of ", info.name);
      return text == "true";
    case OptionType::Int:
      return static_cast<std::int64_t>(std::stoll(text));
    case OptionType::Enum:
      choice_index(info.name, info.choices, text);
      return text;
  }
  return {};
}

void set_adafactor_option(AdafactorOptions& options, const AdafactorOptionInfo& info,
                          const OptionValue& value) {
#define TCLTORCH_SET_FIELD(ctype, field, ...) \
  if (std::string_view(info.name) == #field) return assign(info, value, options.field());
  TCLTORCH_ADAFACTOR_OPTIONS(TCLTORCH_SET_FIELD)
#undef TCLTORCH_SET_FIELD
  TORCH_CHECK_VALUE(false, "no Adafactor option ", info.name);
}

OptionValue get_adafactor_option(const AdafactorOptions& options,
                                 const AdafactorOptionInfo& info) {
#define TCLTORCH_GET_FIELD(ctype, field, ...) \
  if (std::string_view(info.name) == #field) return value_of(info, options.field());
  TCLTORCH_ADAFACTOR_OPTIONS(TCLTORCH_GET_FIELD)
#undef TCLTORCH_GET_FIELD
  TORCH_CHECK_VALUE(false, "no Adafactor option ", info.name);
}

std::string option_value_text(const OptionValue& value) {
  struct {
    std::string operator()(std::monostate) const { return "none"; }
    std::string operator()(double v) const {
      char buf[64];
      auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
      return std::string(buf, end);
    }
    std::string operator()(bool v) const { return v ? "true" : "false"; }
    std::string operator()(std::int64_t v) const { return std::to_string(v); }
    std::string operator()(const std::string& v) const { return v; }
  } visit;
  return std::visit(visit, value);
}

AdafactorOptions::AdafactorOptions(double lr) {
  for (const auto& info : kAdafactorOptionTable) {
    set_adafactor_option(*this, info,
                         adafactor_option_default(info, AdafactorVariant::Torch));
  }
  lr_ = lr;
}

AdafactorOptions AdafactorOptions::defaults_for(AdafactorVariant variant) {
  AdafactorOptions options;
  for (const auto& info : kAdafactorOptionTable) {
    set_adafactor_option(options, info, adafactor_option_default(info, variant));
  }
  return options;
}

void AdafactorOptions::validate() const {
  // Messages name the option, the value and the allowed range; front doors
  // pass them on unchanged (Python: ValueError, Tcl: TORCH VALUE).
  for (const auto& info : kAdafactorOptionTable) {
    const OptionValue value = get_adafactor_option(*this, info);
    double v = 0;
    if (const double* d = std::get_if<double>(&value)) {
      v = *d;
      TORCH_CHECK_VALUE(std::isfinite(v), info.name, " must be a finite number, got ", v);
    } else if (const std::int64_t* i = std::get_if<std::int64_t>(&value)) {
      v = static_cast<double>(*i);
    } else {
      continue;  // unset, a flag or a name (checked when set)
    }
    TORCH_CHECK_VALUE(rule_accepts(info.rule, v), info.name, " must be ",
                      rule_text(info.rule),
                      info.type == OptionType::OptionalDouble ? " or unset" : "", ", got ",
                      option_value_text(value));
  }
  // Rules between options.
  TORCH_CHECK_VALUE(!warmup_init() || relative_step(),
                    "warmup_init requires relative_step");
}

void AdafactorOptions::validate_as_torch() const {
  std::vector<const AdafactorOptionInfo*> checked;
  for (const auto& info : kAdafactorOptionTable) {
    if (info.torch_name) checked.push_back(&info);
  }
  std::stable_sort(checked.begin(), checked.end(), [](auto* a, auto* b) {
    return a->torch_order < b->torch_order;
  });
  for (const auto* p : checked) {
    const AdafactorOptionInfo& info = *p;
    const OptionValue value = get_adafactor_option(*this, info);
    const double* v = std::get_if<double>(&value);
    if (!v) continue;  // unset
    const OptionRule rule = info.torch_rule.value_or(info.rule);
    // As torch words them (torch/optim/_adafactor.py).
    TORCH_CHECK_VALUE(rule_accepts(rule, *v), info.torch_name, " should be ",
                      rule_text(rule), " but is: ", python_repr(*v));
  }
  validate();
}

void AdafactorOptions::serialize(torch::serialize::OutputArchive& archive) const {
  for (const auto& info : kAdafactorOptionTable) {
    const OptionValue value = get_adafactor_option(*this, info);
    c10::IValue ivalue;
    if (const double* d = std::get_if<double>(&value)) {
      // An OptionalDouble is written as std::optional<double> (None or a
      // double), as before the table existed.
      ivalue = info.type == OptionType::OptionalDouble
                   ? c10::IValue(std::optional<double>(*d))
                   : c10::IValue(*d);
    } else if (std::holds_alternative<std::monostate>(value)) {
      ivalue = c10::IValue(std::optional<double>());
    } else if (const bool* b = std::get_if<bool>(&value)) {
      ivalue = c10::IValue(*b);
    } else if (const std::int64_t* i = std::get_if<std::int64_t>(&value)) {
      ivalue = c10::IValue(*i);
    } else {
      ivalue = c10::IValue(std::get<std::string>(value));
    }
    archive.write(info.name, ivalue);
  }
}

void AdafactorOptions::serialize(torch::serialize::InputArchive& archive) {
  c10::IValue marker;
  // Every archive this class writes names its variant; one without it was
  // written by another optimizer.
  TORCH_CHECK(archive.try_read("variant", marker),
              "not an Adafactor checkpoint (its options have no \"variant\")");
  // A key the file lacks (it predates the option) keeps this object's value,
  // or, where the default depends on the variant, takes the file's variant's.
  const AdafactorVariant variant = parse_variant(marker.toStringRef());
  for (const auto& info : kAdafactorOptionTable) {
    c10::IValue ivalue;
    if (!archive.try_read(info.name, ivalue)) {
      if (variant != AdafactorVariant::Torch && info.defaults[static_cast<int>(variant)]) {
        set_adafactor_option(*this, info, adafactor_option_default(info, variant));
      }
      continue;
    }
    OptionValue value;
    if (ivalue.isNone()) {
      value = std::monostate{};
    } else if (ivalue.isDouble()) {
      value = ivalue.toDouble();
    } else if (ivalue.isBool()) {
      value = ivalue.toBool();
    } else if (ivalue.isInt()) {
      value = info.type == OptionType::Int ? OptionValue(ivalue.toInt())
                                           : OptionValue(static_cast<double>(ivalue.toInt()));
    } else if (ivalue.isString()) {
      value = ivalue.toStringRef();
    }
    set_adafactor_option(*this, info, value);
  }
  validate();
}

bool operator==(const AdafactorOptions& a, const AdafactorOptions& b) {
  for (const auto& info : kAdafactorOptionTable) {
    if (get_adafactor_option(a, info) != get_adafactor_option(b, info)) return false;
  }
  return true;
}

double AdafactorOptions::get_lr() const { return lr(); }
void AdafactorOptions::set_lr(const double lr) { this->lr(lr); }

void AdafactorParamState::serialize(
    torch::serialize::OutputArchive& archive) const {
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(step);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(row_var);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(col_var);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(variance);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(exp_avg);
}

void AdafactorParamState::serialize(torch::serialize::InputArchive& archive) {
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(torch::Tensor, step);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(torch::Tensor, row_var);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(torch::Tensor, col_var);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(torch::Tensor, variance);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(torch::Tensor, exp_avg);
}

namespace {
bool same_tensor(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.defined() != b.defined()) return false;
  return !a.defined() || torch::equal(a, b);
}
}  // namespace

bool operator==(const AdafactorParamState& a, const AdafactorParamState& b) {
  return same_tensor(a.step(), b.step()) && same_tensor(a.row_var(), b.row_var()) &&
         same_tensor(a.col_var(), b.col_var()) &&
         same_tensor(a.variance(), b.variance()) &&
         same_tensor(a.exp_avg(), b.exp_avg());
}

Adafactor::Adafactor(
    const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
    AdafactorOptions defaults)
    : Optimizer(param_groups, std::make_unique<AdafactorOptions>(defaults)) {
  // LibTorch's add_param_group merges a group's own options into the
  // defaults only for the optimizers it knows, and gives any other one the
  // defaults: each group gets its options back here.
  for (std::size_t i = 0; i < param_groups.size(); ++i) {
    if (param_groups[i].has_options()) {
      param_groups_[i].set_options(param_groups[i].options().clone());
    }
  }
  defaults.validate();
  for (auto& group : param_groups_) {
    auto& options = static_cast<AdafactorOptions&>(group.options());
    options.validate();
    // Corrected weight decay divides by the lr given here, which schedules
    // overwrite later.
    if (options.weight_decay_mode() == WeightDecayMode::Corrected && !options.max_lr() &&
        options.lr() > 0) {
      options.max_lr(options.lr());
    }
  }
}

Adafactor::Adafactor(std::vector<torch::Tensor> params, AdafactorOptions defaults)
    : Adafactor({torch::optim::OptimizerParamGroup(std::move(params))},
                std::move(defaults)) {}

torch::Tensor Adafactor::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss = {};
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  // Stepping in backward, the steps have run (step_in_backward.cpp), unless
  // a hook was replaced: that is said here rather than stepping nothing.
  if (in_backward_) {
    detail::check_hooks_in_place(*in_backward_);
    return loss;
  }
  for (auto& group : param_groups_) {
    auto& options = static_cast<AdafactorOptions&>(group.options());
    // Options may have been changed since construction (set_lr, a scheduler).
    options.validate();
    for (auto& p : group.params()) {
      const auto& grad = p.grad();
      if (grad.defined()) step_parameter(p, grad, options);
    }
  }
  return loss;
}

void Adafactor::step_parameter(const torch::Tensor& p, const torch::Tensor& grad,
                               const AdafactorOptions& options) {
  auto it = state_.find(p.unsafeGetTensorImpl());
  if (it == state_.end()) {
    auto state = std::make_unique<AdafactorParamState>();
    adafactor_init_state(p, options, *state);
    it = state_.emplace(p.unsafeGetTensorImpl(), std::move(state)).first;
  }
  if (!adafactor_step(p, grad, static_cast<AdafactorParamState&>(*it->second), options)) {
    ++skipped_updates_;
  }
}

void Adafactor::save(torch::serialize::OutputArchive& archive) const {
  serialize(*this, archive);
}

void Adafactor::load(torch::serialize::InputArchive& archive) {
  serialize(*this, archive);
}

}  // namespace tcltorch
