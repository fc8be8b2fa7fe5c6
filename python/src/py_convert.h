// Python values as the core's option values and per-parameter state, for
// the module's functions (module.cpp) and the per-group step (group_step.cpp).
#pragma once

#include <torch/csrc/utils/pybind.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "tcltorch/adafactor.h"

namespace tcltorch::python {

namespace py = pybind11;

using tcltorch::AdafactorParamState;

inline double as_double(const char* name, const py::handle& v) {
  if (PyBool_Check(v.ptr()) || !PyNumber_Check(v.ptr())) {
    throw py::type_error(std::string(name) + " must be a number, got " +
                         std::string(py::str(py::type::of(v).attr("__name__"))));
  }
  return v.cast<double>();
}

inline std::optional<double> as_optional_double(const char* name, const py::handle& v) {
  if (v.is_none()) return std::nullopt;
  return as_double(name, v);
}

inline bool as_bool(const char* name, const py::handle& v) {
  if (!PyBool_Check(v.ptr())) {
    throw py::type_error(std::string(name) + " must be True or False");
  }
  return v.cast<bool>();
}

inline std::string as_string(const char* name, const py::handle& v) {
  if (!PyUnicode_Check(v.ptr())) throw py::type_error(std::string(name) + " must be a str");
  return v.cast<std::string>();
}

// One keyword of the table (Python's None = unset, an enum by name) as the
// core's value; TypeError for a value of the wrong type.
inline tcltorch::OptionValue option_value(const tcltorch::AdafactorOptionInfo& info,
                                   const py::handle& v) {
  using tcltorch::OptionType;
  const char* n = info.name;
  switch (info.type) {
    case OptionType::OptionalDouble:
      if (v.is_none()) return {};
      [[fallthrough]];
    case OptionType::Double:
      return as_double(n, v);
    case OptionType::Bool:
      return as_bool(n, v);
    case OptionType::Int:
      if (!PyLong_Check(v.ptr()) || PyBool_Check(v.ptr())) {
        throw py::type_error(std::string(n) + " must be an int");
      }
      return v.cast<std::int64_t>();
    case OptionType::Enum:
      // None names the choice "none" where there is one (momentum_dtype).
      if (v.is_none() && info.choices && std::string_view(info.choices[0]) == "none") {
        return std::string("none");
      }
      return as_string(n, v);
  }
  return {};
}

inline py::dict state_dict_of(const AdafactorParamState& s) {
  py::dict d;
  auto put = [&](const char* name, const at::Tensor& t) {
    if (t.defined()) d[name] = t;
  };
  put("step", s.step());
  put("row_var", s.row_var());
  put("col_var", s.col_var());
  put("variance", s.variance());
  put("exp_avg", s.exp_avg());
  return d;
}

// The state dict's keys as interned Python strings, made once: a step
// converts every parameter's dict, so per-key string objects would show.
// Never freed (they may outlive the interpreter's finalisation otherwise).
struct StateKeys {
  PyObject* step = PyUnicode_InternFromString("step");
  PyObject* row_var = PyUnicode_InternFromString("row_var");
  PyObject* col_var = PyUnicode_InternFromString("col_var");
  PyObject* variance = PyUnicode_InternFromString("variance");
  PyObject* exp_avg = PyUnicode_InternFromString("exp_avg");
};
inline const StateKeys& state_keys() {
  static const StateKeys* keys = new StateKeys();
  return *keys;
}

// A state dict of tcltorch.Adafactor (or torch.optim.Adafactor) as the
// core's state: the same tensors, not copies.
inline AdafactorParamState state_from_dict(const py::handle& d) {
  const StateKeys& k = state_keys();
  AdafactorParamState s;
  auto get = [&](PyObject* key) -> at::Tensor {
    PyObject* v = PyDict_GetItemWithError(d.ptr(), key);  // borrowed
    if (!v) {
      if (PyErr_Occurred()) throw py::error_already_set();
      return at::Tensor();
    }
    return py::handle(v).cast<at::Tensor>();
  };
  s.step(get(k.step));
  s.row_var(get(k.row_var));
  s.col_var(get(k.col_var));
  s.variance(get(k.variance));
  s.exp_avg(get(k.exp_avg));
  return s;
}

}  // namespace tcltorch::python
