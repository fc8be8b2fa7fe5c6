// One argument parser for every torch:: command: each command declares a
// table of its arguments (names in camelCase and snake_case, type, default,
// validation, positional order) and parse_args reads the command line against
// it, in either the named form (-lr 0.1) or the legacy positional form.
//
// Tcl-only header: no LibTorch here, so it stays cheap to include.
#pragma once

#include "tcl_compat.h"

#include <string>
#include <vector>

namespace tcltorch::tcl {

enum class ArgType {
  Double,  // finite floating-point number
  Int,     // wide integer
  Bool,    // any Tcl boolean
  String,  // free text, or one of `choices` (unique prefixes accepted)
  Object,  // left to the command: handles, lists, shapes
};

// A condition on a number; `text` completes "must be ...".
struct NumberRule {
  bool (*accept)(double) = nullptr;
  const char* text = nullptr;
};

struct ArgSpec {
  const char* name;               // camelCase, without the dash
  const char* snake = nullptr;    // snake_case spelling when it differs
  ArgType type = ArgType::Object;
  bool required = false;
  const char* default_value = nullptr;  // nullptr: absent unless given
  const char* placeholder = "value";    // shown in usage lines
  NumberRule rule = {};
  const char* const* choices = nullptr;  // nullptr-terminated, String only
  bool positional = true;  // part of the legacy positional form, in order
};

struct CommandSpec {
  const char* name;  // fully qualified, e.g. "torch::optimizer_adafactor"
  std::vector<ArgSpec> args;
};

// The parsed, converted and validated arguments of one call. Values are
// looked up by the camelCase name of their ArgSpec.
class Args {
 public:
  Args() = default;
  Args(const Args&) = delete;
  Args& operator=(const Args&) = delete;
  ~Args();

  bool has(const char* name) const;    // given, or has a default
  bool given(const char* name) const;  // given by the caller
  Tcl_Obj* obj(const char* name) const;
  double number(const char* name) const;
  Tcl_WideInt integer(const char* name) const;
  bool flag(const char* name) const;
  std::string str(const char* name) const;

 private:
  friend int parse_args(Tcl_Interp*, const CommandSpec&, int, Tcl_Obj* const[],
                        Args&);
  struct Value {
    Tcl_Obj* obj = nullptr;  // holds a reference
    bool given = false;
    double number = 0;
    Tcl_WideInt integer = 0;
    bool flag = false;
    std::string text;
  };
  std::size_t index(const char* name) const;
  void set(std::size_t i, Tcl_Obj* obj, bool given);

  const CommandSpec* spec_ = nullptr;
  std::vector<Value> values_;
};

// Parses objv[1..objc-1]. On error leaves a Tcl-style message and -errorcode
// in the interpreter and returns TCL_ERROR.
int parse_args(Tcl_Interp* interp, const CommandSpec& spec, int objc,
               Tcl_Obj* const objv[], Args& out);

// Tcl_GetWideIntFromObj without Tcl 8.6's silent wrap of 2^63..2^64-1 to
// negative numbers. No message: callers word their own.
int get_wide_int(Tcl_Obj* obj, Tcl_WideInt& out);

// "cmd -a value ?-b value?" and "cmd a ?b?": for messages and docs.
std::string named_usage(const CommandSpec& spec);
std::string positional_usage(const CommandSpec& spec);

// Number rules shared by many tables.
extern const NumberRule kNonNegative;  // >= 0
extern const NumberRule kPositive;     // > 0
extern const NumberRule kUnitInterval; // in [0, 1]
extern const NumberRule kPositiveInt;  // >= 1

}  // namespace tcltorch::tcl
