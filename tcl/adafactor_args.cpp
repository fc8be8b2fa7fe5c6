#include "adafactor_args.h"

#include <array>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <vector>
#include <string>
#include <utility>

#include "errors.h"

namespace tcltorch::tcl {
namespace {

// The parser takes a plain function per rule: one instantiation per rule,
// and one more that also accepts -1 (Tcl's spelling of "unset").
template <OptionRule R>
bool accepts(double v) {
  return rule_accepts(R, v);
}
template <OptionRule R>
bool accepts_or_minus_one(double v) {
  return v == -1.0 || rule_accepts(R, v);
}

using Accept = bool (*)(double);
template <std::size_t... R>
constexpr auto accept_table(std::index_sequence<R...>, bool or_minus_one) {
  return std::array<Accept, sizeof...(R)>{
      (or_minus_one ? accepts_or_minus_one<static_cast<OptionRule>(R)>
                    : accepts<static_cast<OptionRule>(R)>)...};
}
constexpr auto kAccepts = accept_table(std::make_index_sequence<kOptionRuleCount>(), false);
constexpr auto kAcceptsOrMinusOne =
    accept_table(std::make_index_sequence<kOptionRuleCount>(), true);

// Strings the specs point at, made once and never freed (specs are static).
const char* keep(std::string text) {
  static std::deque<std::string> store;
  return store.emplace_back(std::move(text)).c_str();
}

// clipThreshold -> clip_threshold; nullptr when the spelling is the same.
const char* snake_of(const char* camel) {
  std::string out;
  for (const char* c = camel; *c; ++c) {
    if (std::isupper(static_cast<unsigned char>(*c))) {
      out += '_';
      out += static_cast<char>(std::tolower(static_cast<unsigned char>(*c)));
    } else {
      out += *c;
    }
  }
  return out == camel ? nullptr : keep(out);
}

// The choices of an enum, the Tcl command's default first (so that messages
// read "must be transformers or torch").
const char* const* tcl_choices(const AdafactorOptionInfo& info) {
  const char* first = info.tcl_default ? info.tcl_default : info.defaults[0];
  // Kept (and reachable, for LeakSanitizer) as long as the specs that point
  // into them, as keep() keeps strings.
  static std::deque<std::vector<const char*>> store;
  auto& list = store.emplace_back(std::vector<const char*>{first});
  for (auto c = info.choices; *c; ++c) {
    if (std::strcmp(*c, first) != 0) list.push_back(*c);
  }
  list.push_back(nullptr);
  return list.data();
}

ArgSpec arg_of(const AdafactorOptionInfo& info) {
  ArgSpec arg{.name = info.tcl, .snake = snake_of(info.tcl), .positional = info.tcl_positional};
  const auto rule = static_cast<std::size_t>(info.rule);
  switch (info.type) {
    case OptionType::Double:
    case OptionType::OptionalDouble:
      arg.type = ArgType::Double;
      if (info.tcl_form == TclForm::DecayRate) break;  // every number means a decay
      if (info.tcl_minus_one_unsets) {
        arg.rule = {kAcceptsOrMinusOne[rule],
                    keep(std::string("-1 (") + (info.none_doc ? info.none_doc : "unset") +
                         ") or " + rule_text(info.rule))};
      } else if (info.rule != OptionRule::Any) {
        arg.rule = {kAccepts[rule], rule_text(info.rule)};
      }
      break;
    case OptionType::Int:
      arg.type = ArgType::Int;
      arg.placeholder = "int";
      if (info.rule != OptionRule::Any) arg.rule = {kAccepts[rule], rule_text(info.rule)};
      break;
    case OptionType::Bool:
      arg.type = ArgType::Bool;
      arg.placeholder = "bool";
      break;
    case OptionType::Enum:
      arg.type = ArgType::String;
      arg.placeholder = "name";
      arg.choices = tcl_choices(info);
      break;
  }
  return arg;
}

// -decayRate: -1 is the default schedule 1 - t^-0.8; a positive c means
// 1 - t^-c; any other negative x means 1 - t^x.
double beta2_decay_of(double decay_rate) {
  if (decay_rate == -1.0) return -0.8;
  return decay_rate > 0 ? -decay_rate : decay_rate;
}

// A number as the Tcl command spells it, as the core's value.
OptionValue number_from_tcl(const AdafactorOptionInfo& info, double number) {
  if (info.type == OptionType::OptionalDouble && info.tcl_minus_one_unsets && number == -1.0) {
    return {};
  }
  return info.tcl_form == TclForm::DecayRate ? beta2_decay_of(number) : number;
}

OptionValue from_args(const AdafactorOptionInfo& info, const Args& args) {
  switch (info.type) {
    case OptionType::Bool: return args.flag(info.tcl);
    case OptionType::Int: return static_cast<std::int64_t>(args.integer(info.tcl));
    case OptionType::Enum: return args.str(info.tcl);
    default: return number_from_tcl(info, args.number(info.tcl));
  }
}

// The Tcl command's own default (text in Tcl's spelling) as the core's value.
OptionValue tcl_default_of(const AdafactorOptionInfo& info) {
  const char* t = info.tcl_default;
  switch (info.type) {
    case OptionType::Bool: return std::strcmp(t, "true") == 0 || std::strcmp(t, "1") == 0;
    case OptionType::Int: return static_cast<std::int64_t>(std::strtoll(t, nullptr, 10));
    case OptionType::Enum: return std::string(t);
    default: return number_from_tcl(info, std::strtod(t, nullptr));
  }
}

const Args* giver(const std::vector<const Args*>& layers, const char* name) {
  for (const Args* a : layers) {
    if (a->given(name)) return a;
  }
  return nullptr;
}

}  // namespace

CommandSpec adafactor_command_spec(const char* name, std::vector<ArgSpec> leading,
                                   std::vector<ArgSpec> trailing) {
  CommandSpec spec{name, std::move(leading)};
  for (const auto& info : kAdafactorOptionTable) spec.args.push_back(arg_of(info));
  for (auto& a : trailing) spec.args.push_back(std::move(a));
  return spec;
}

int adafactor_settings(Tcl_Interp* interp, const std::vector<const Args*>& layers,
                       AdafactorSettings& out) {
  out.clear();
  // The variant first: the other defaults follow it.
  const auto* variant_info = find_adafactor_option("variant");
  AdafactorVariant variant = AdafactorVariant::Torch;
  {
    const Args* a = giver(layers, variant_info->tcl);
    const std::string name = a ? a->str(variant_info->tcl)
                               : std::get<std::string>(tcl_default_of(*variant_info));
    for (std::size_t v = 0; v < kAdafactorVariantCount; ++v) {
      if (name == kAdafactorVariantNames[v]) variant = static_cast<AdafactorVariant>(v);
    }
  }
  for (const auto& info : kAdafactorOptionTable) {
    OptionValue value;
    if (const Args* a = giver(layers, info.tcl)) {
      value = from_args(info, *a);
    } else if (info.tcl_default &&
               !(variant != AdafactorVariant::Torch &&
                 info.defaults[static_cast<std::size_t>(variant)])) {
      // The command's own default, unless the variant has one of its own
      // (big_vision's lr).
      value = tcl_default_of(info);
    } else {
      value = adafactor_option_default(info, variant);
    }
    out.emplace_back(&info, std::move(value));
  }
  // Rules between options, in the Tcl command's words.
  auto flag = [&](const char* name) {
    for (const auto& [info, value] : out) {
      if (std::strcmp(info->name, name) == 0) return std::get<bool>(value);
    }
    return false;
  };
  if (flag("warmup_init") && !flag("relative_step")) {
    const Args* a = giver(layers, "warmupInit");
    Tcl_Obj* word = a ? a->obj("warmupInit") : Tcl_NewStringObj("true", -1);
    return bad_value(interp, "warmupInit", word,
                     "needs -relativeStep true (warm-up ramps the relative step)");
  }
  return TCL_OK;
}

}  // namespace tcltorch::tcl
