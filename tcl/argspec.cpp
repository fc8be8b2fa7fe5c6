#include "argspec.h"

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string_view>

#include "errors.h"

namespace tcltorch::tcl {

const NumberRule kNonNegative{[](double v) { return v >= 0; }, ">= 0"};
const NumberRule kPositive{[](double v) { return v > 0; }, "> 0"};
const NumberRule kUnitInterval{[](double v) { return v >= 0 && v <= 1; },
                               "in [0, 1]"};
const NumberRule kPositiveInt{[](double v) { return v >= 1; }, ">= 1"};

Args::~Args() {
  for (auto& v : values_) {
    if (v.obj) Tcl_DecrRefCount(v.obj);
  }
}

std::size_t Args::index(const char* name) const {
  for (std::size_t i = 0; i < spec_->args.size(); ++i) {
    if (std::strcmp(spec_->args[i].name, name) == 0) return i;
  }
  // A typo in a command's own code, not a user error.
  throw std::logic_error(std::string("no argument \"") + name + "\" in the table of " +
                         spec_->name);
}

void Args::set(std::size_t i, Tcl_Obj* obj, bool given) {
  Tcl_IncrRefCount(obj);
  if (values_[i].obj) Tcl_DecrRefCount(values_[i].obj);
  values_[i].obj = obj;
  values_[i].given = given;
}

bool Args::has(const char* name) const { return values_[index(name)].obj != nullptr; }
bool Args::given(const char* name) const { return values_[index(name)].given; }
Tcl_Obj* Args::obj(const char* name) const { return values_[index(name)].obj; }
double Args::number(const char* name) const { return values_[index(name)].number; }
Tcl_WideInt Args::integer(const char* name) const {
  return values_[index(name)].integer;
}
bool Args::flag(const char* name) const { return values_[index(name)].flag; }
std::string Args::str(const char* name) const { return values_[index(name)].text; }

namespace {

std::string option_list(const CommandSpec& spec) {
  // "-a, -b, or -c", as Tcl_GetIndexFromObj words it.
  std::string out;
  const auto n = spec.args.size();
  for (std::size_t i = 0; i < n; ++i) {
    if (i > 0) out += (n > 2 ? ", " : " ");
    if (i + 1 == n && n > 1) out += "or ";
    out += "-";
    out += spec.args[i].name;
  }
  return out;
}

std::string choice_list(const char* const* choices) {
  std::string out;
  std::size_t n = 0;
  while (choices[n]) ++n;
  for (std::size_t i = 0; i < n; ++i) {
    if (i > 0) out += (n > 2 ? ", " : " ");
    if (i + 1 == n && n > 1) out += "or ";
    out += choices[i];
  }
  return out;
}

bool starts_with(const char* text, const char* prefix, std::size_t len) {
  return std::strncmp(text, prefix, len) == 0;
}

// Exact spelling first, then a unique prefix of any spelling. Returns the
// index of the argument, -1 for no match, -2 for an ambiguous prefix.
int match_option(const CommandSpec& spec, const char* text) {
  const char* key = text[0] == '-' ? text + 1 : nullptr;
  if (!key || !*key) return -1;
  const auto len = std::strlen(key);
  int match = -1;
  bool ambiguous = false;
  for (std::size_t i = 0; i < spec.args.size(); ++i) {
    const auto& a = spec.args[i];
    if (std::strcmp(a.name, key) == 0 || (a.snake && std::strcmp(a.snake, key) == 0)) {
      return static_cast<int>(i);
    }
    if (starts_with(a.name, key, len) || (a.snake && starts_with(a.snake, key, len))) {
      if (match >= 0) ambiguous = true;
      match = static_cast<int>(i);
    }
  }
  return ambiguous ? -2 : match;
}

// match_option, or -1 after leaving Tcl's "bad option" or "ambiguous
// option" error in the interpreter.
int find_option(Tcl_Interp* interp, const CommandSpec& spec, Tcl_Obj* word) {
  const char* text = Tcl_GetString(word);
  const int i = match_option(spec, text);
  if (i >= 0) return i;
  fail(interp,
       std::string(i == -2 ? "ambiguous" : "bad") + " option \"" + text + "\": must be " +
           option_list(spec),
       {"TCL", "LOOKUP", "INDEX", "option", text});
  return -1;
}

int bad_value(Tcl_Interp* interp, const ArgSpec& arg, Tcl_Obj* obj,
              const std::string& requirement) {
  return tcltorch::tcl::bad_value(interp, arg.name, obj, requirement);
}

// Whether Tcl refused `obj` as a double only because it is a NaN (Tcl
// parses "nan" but Tcl_GetDoubleFromObj rejects it), so that -lr nan and
// -lr inf get the same message.
bool is_nan_text(Tcl_Obj* obj) {
  const char* text = Tcl_GetString(obj);
  char* end = nullptr;
  const double v = std::strtod(text, &end);
  if (end == text) return false;
  while (std::isspace(static_cast<unsigned char>(*end))) ++end;
  return *end == '\0' && std::isnan(v);
}

// Whether `obj` is written as an integer (Tcl's decimal, 0x, 0o or 0b
// forms), whatever its size.
bool is_integer_text(Tcl_Obj* obj) {
  std::string_view t = Tcl_GetString(obj);
  auto space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  while (!t.empty() && space(t.front())) t.remove_prefix(1);
  while (!t.empty() && space(t.back())) t.remove_suffix(1);
  if (!t.empty() && (t.front() == '-' || t.front() == '+')) t.remove_prefix(1);
  int base = 10;
  if (t.size() > 2 && t[0] == '0' && std::strchr("xXoObB", t[1])) {
    base = std::strchr("xX", t[1]) ? 16 : std::strchr("oO", t[1]) ? 8 : 2;
    t.remove_prefix(2);
  }
  if (t.empty()) return false;
  for (char c : t) {
    const int d = std::isdigit(static_cast<unsigned char>(c)) ? c - '0'
                  : std::isxdigit(static_cast<unsigned char>(c))
                      ? std::tolower(static_cast<unsigned char>(c)) - 'a' + 10
                      : 99;
    if (d >= base) return false;
  }
  return true;
}

// "an integer", with the table's rule when it has one ("an integer >= 0").
std::string an_integer(const ArgSpec& arg) {
  return arg.rule.text ? std::string("an integer ") + arg.rule.text : "an integer";
}

// Converts and validates one value into `v`.
int convert(Tcl_Interp* interp, const ArgSpec& arg, Tcl_Obj* obj, double& number, Tcl_WideInt& integer, bool& flag,
            std::string& text) {
  switch (arg.type) {
    case ArgType::Double: {
      if (Tcl_GetDoubleFromObj(nullptr, obj, &number) != TCL_OK) {
        return bad_value(interp, arg, obj,
                         is_nan_text(obj) ? "must be a finite number"
                                          : "must be a floating-point number");
      }
      if (!std::isfinite(number)) {
        return bad_value(interp, arg, obj, "must be a finite number");
      }
      if (arg.rule.accept && !arg.rule.accept(number)) {
        return bad_value(interp, arg, obj, std::string("must be ") + arg.rule.text);
      }
      return TCL_OK;
    }
    case ArgType::Int: {
      if (get_wide_int(obj, integer) != TCL_OK) {
        // Not an integer (2.5, x): the rule it has to meet.
        std::string requirement = "must be " + an_integer(arg);
        if (is_integer_text(obj)) {
          // Too large for 64 bits: say which end was passed.
          const bool negative = std::strchr(Tcl_GetString(obj), '-') != nullptr;
          requirement = !negative           ? "must be an integer below 2^63"
                        : arg.rule.text     ? std::string("must be ") + arg.rule.text
                                            : "must be an integer >= -2^63";
        }
        return bad_value(interp, arg, obj, requirement);
      }
      if (arg.rule.accept && !arg.rule.accept(static_cast<double>(integer))) {
        return bad_value(interp, arg, obj, std::string("must be ") + arg.rule.text);
      }
      return TCL_OK;
    }
    case ArgType::Bool: {
      int b = 0;
      if (Tcl_GetBooleanFromObj(nullptr, obj, &b) != TCL_OK) {
        return bad_value(interp, arg, obj, "must be a boolean");
      }
      flag = b != 0;
      return TCL_OK;
    }
    case ArgType::String: {
      text = Tcl_GetString(obj);
      if (!arg.choices) return TCL_OK;
      const char* found = nullptr;
      int prefix_matches = 0;
      for (auto c = arg.choices; *c; ++c) {
        if (text == *c) {
          found = *c;
          prefix_matches = 1;
          break;
        }
        if (!text.empty() && starts_with(*c, text.c_str(), text.size())) {
          found = *c;
          ++prefix_matches;
        }
      }
      if (prefix_matches != 1) {
        return bad_value(interp, arg, obj, "must be " + choice_list(arg.choices));
      }
      text = found;
      return TCL_OK;
    }
    case ArgType::Object:
      return TCL_OK;
  }
  return TCL_OK;
}

// "-name" (a dash, then a letter) opens the named form; "-1" or "-1 2" (a
// negative number, a list of numbers) is a positional value.
bool looks_like_option(Tcl_Obj* word) {
  const char* text = Tcl_GetString(word);
  return text[0] == '-' && std::isalpha(static_cast<unsigned char>(text[1]));
}

}  // namespace

int get_wide_int(Tcl_Obj* obj, Tcl_WideInt& out) {
  if (Tcl_GetWideIntFromObj(nullptr, obj, &out) != TCL_OK) return TCL_ERROR;
  // Tcl 8.6 reads 2^63 .. 2^64-1 as negative numbers: refuse the wrap.
  const char* text = Tcl_GetString(obj);
  while (std::isspace(static_cast<unsigned char>(*text))) ++text;
  return (out < 0) == (*text == '-') || out == 0 ? TCL_OK : TCL_ERROR;
}

std::string named_usage(const CommandSpec& spec) {
  std::string out = spec.name;
  for (const auto& a : spec.args) {
    std::string word = std::string("-") + a.name + " " + a.placeholder;
    out += a.required ? " " + word : " ?" + word + "?";
  }
  return out;
}

std::string positional_usage(const CommandSpec& spec) {
  std::string out = spec.name;
  for (const auto& a : spec.args) {
    if (!a.positional) break;
    const char* word = a.snake ? a.snake : a.name;
    out += a.required ? std::string(" ") + word : std::string(" ?") + word + "?";
  }
  return out;
}

int parse_args(Tcl_Interp* interp, const CommandSpec& spec, int objc,
               Tcl_Obj* const objv[], Args& out) {
  out.spec_ = &spec;
  out.values_.assign(spec.args.size(), {});
  const bool named = objc > 1 && looks_like_option(objv[1]);

  auto store = [&](std::size_t i, Tcl_Obj* obj, bool given) {
    auto& v = out.values_[i];
    if (convert(interp, spec.args[i], obj, v.number, v.integer, v.flag,
                v.text) != TCL_OK) {
      return TCL_ERROR;
    }
    out.set(i, obj, given);
    return TCL_OK;
  };

  if (named) {
    for (int k = 1; k < objc; k += 2) {
      const int i = find_option(interp, spec, objv[k]);
      if (i < 0) return TCL_ERROR;
      if (k + 1 >= objc) {
        return fail(interp,
                    std::string("value for \"") + Tcl_GetString(objv[k]) +
                        "\" missing: should be \"" + named_usage(spec) + "\"",
                    {"TCL", "WRONGARGS"});
      }
      if (store(static_cast<std::size_t>(i), objv[k + 1], true) != TCL_OK) {
        return TCL_ERROR;
      }
    }
  } else {
    std::size_t max_positional = 0;
    while (max_positional < spec.args.size() && spec.args[max_positional].positional) {
      ++max_positional;
    }
    // An option of this command after a positional first argument, where
    // it cannot be a value (too many words, a value of the wrong type, or a
    // handle slot): the caller mixed the two forms.
    for (int k = 2; k < objc; ++k) {
      if (!looks_like_option(objv[k]) || match_option(spec, Tcl_GetString(objv[k])) < 0) {
        continue;
      }
      const auto slot = static_cast<std::size_t>(k - 1);
      bool mixed = slot >= max_positional || spec.args[slot].type == ArgType::Object;
      if (!mixed) {
        Args::Value scratch;
        mixed = convert(interp, spec.args[slot], objv[k], scratch.number, scratch.integer,
                        scratch.flag, scratch.text) != TCL_OK;
      }
      if (mixed) {
        return fail(interp,
                    std::string("bad argument \"") + Tcl_GetString(objv[k]) +
                        "\": the positional and the named form cannot be mixed (the first "
                        "argument is a positional value): should be \"" +
                        positional_usage(spec) + "\" or \"" + named_usage(spec) + "\"",
                    {"TCL", "WRONGARGS"});
      }
    }
    if (static_cast<std::size_t>(objc - 1) > max_positional) {
      return fail(interp,
                  "wrong # args: should be \"" + positional_usage(spec) + "\" or \"" +
                      named_usage(spec) + "\"",
                  {"TCL", "WRONGARGS"});
    }
    for (int k = 1; k < objc; ++k) {
      if (store(static_cast<std::size_t>(k - 1), objv[k], true) != TCL_OK) {
        return TCL_ERROR;
      }
    }
  }

  for (std::size_t i = 0; i < spec.args.size(); ++i) {
    const auto& a = spec.args[i];
    if (out.values_[i].obj) continue;
    if (a.required) {
      const std::string usage = named ? named_usage(spec) : positional_usage(spec);
      return fail(interp,
                  std::string("missing required ") + (named ? "option -" : "argument ") +
                      (named ? a.name : (a.snake ? a.snake : a.name)) +
                      ": should be \"" + usage + "\"",
                  {"TCL", "WRONGARGS"});
    }
    if (a.default_value) {
      Tcl_Obj* value = Tcl_NewStringObj(a.default_value, -1);
      Tcl_IncrRefCount(value);
      const int rc = store(i, value, false);
      Tcl_DecrRefCount(value);
      if (rc != TCL_OK) return TCL_ERROR;  // a bad default in a table: reported

    }
  }
  return TCL_OK;
}

}  // namespace tcltorch::tcl
