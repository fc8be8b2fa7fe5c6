// tcltorch._C: the C++ core seen from Python, plus the bridge to the handles
// of a Tcl interpreter. Only argument translation lives here.
#include <torch/csrc/utils/pybind.h>
#include <torch/serialize.h>

#include <stdexcept>
#include <string>

#include "adafactor_detail.h"
#include "bridge.h"
#include "group_step.h"
#include "py_convert.h"
#include "tcltorch/adafactor.h"
#include "tcltorch/adafactor_checkpoint.h"
#include "tcltorch/checkpoint.h"
#include "tcltorch/step_in_backward.h"

namespace py = pybind11;

namespace {

using tcltorch::Adafactor;
using tcltorch::AdafactorOptions;
using tcltorch::AdafactorParamState;

using tcltorch::python::as_string;
using tcltorch::python::option_value;
using tcltorch::python::state_dict_of;
using tcltorch::python::state_from_dict;


py::object to_python(const tcltorch::OptionValue& value) {
  struct {
    py::object operator()(std::monostate) const { return py::none(); }
    py::object operator()(double v) const { return py::float_(v); }
    py::object operator()(bool v) const { return py::bool_(v); }
    py::object operator()(std::int64_t v) const { return py::int_(v); }
    py::object operator()(const std::string& v) const { return py::str(v); }
  } visit;
  return std::visit(visit, value);
}

// Keyword arguments use the core's own option names (the table's).
// Options not given take the defaults of the variant given.
AdafactorOptions options_from(const py::kwargs& kwargs, bool validate = true) {
  AdafactorOptions o;
  if (kwargs.contains("variant")) {
    o = AdafactorOptions::defaults_for(
        tcltorch::parse_variant(as_string("variant", kwargs["variant"])));
  }
  for (const auto& [key, value] : kwargs) {
    const auto name = key.cast<std::string>();
    const auto* info = tcltorch::find_adafactor_option(name);
    if (!info) throw py::type_error("unexpected keyword argument '" + name + "'");
    tcltorch::set_adafactor_option(o, *info, option_value(*info, value));
  }
  if (validate) o.validate();
  return o;
}

py::dict options_dict(const AdafactorOptions& o) {
  py::dict d;
  for (const auto& info : tcltorch::kAdafactorOptionTable) {
    d[info.name] = to_python(tcltorch::get_adafactor_option(o, info));
  }
  return d;
}

// The table of options, for the Python door and the docs.
py::list option_table() {
  using tcltorch::AdafactorVariant;
  py::list rows;
  for (const auto& info : tcltorch::kAdafactorOptionTable) {
    py::dict row;
    row["name"] = info.name;
    row["type"] = tcltorch::type_name(info.type);
    row["tcl"] = info.tcl;
    py::dict defaults;
    for (std::size_t v = 0; v < tcltorch::kAdafactorVariantCount; ++v) {
      defaults[tcltorch::kAdafactorVariantNames[v]] = to_python(
          tcltorch::adafactor_option_default(info, static_cast<AdafactorVariant>(v)));
    }
    row["defaults"] = defaults;
    row["rule"] = tcltorch::rule_name(info.rule);
    row["rule_text"] = tcltorch::rule_text(info.rule);
    row["doc"] = info.doc;
    row["none_doc"] = info.none_doc ? py::object(py::str(info.none_doc)) : py::none();
    py::list choices;
    for (auto c = info.choices; c && *c; ++c) choices.append(*c);
    row["choices"] = choices;
    row["tcl_positional"] = info.tcl_positional;
    row["tcl_default"] = info.tcl_default ? py::object(py::str(info.tcl_default)) : py::none();
    row["tcl_minus_one_unsets"] = info.tcl_minus_one_unsets;
    row["tcl_form"] = info.tcl_form == tcltorch::TclForm::DecayRate ? "decay_rate" : "plain";
    row["torch_name"] = info.torch_name ? py::object(py::str(info.torch_name)) : py::none();
    row["torch_rule_text"] = tcltorch::rule_text(info.torch_rule.value_or(info.rule));
    rows.append(row);
  }
  return rows;
}


// The core states of a list of state dicts, and, after the step, the state a
// step added (exp_avg, when beta1 was turned on after the state was made)
// written back into the dicts.
struct CoreStates {
  std::vector<AdafactorParamState> states;
  std::vector<char> had_exp_avg;

  explicit CoreStates(const py::list& dicts) {
    states.reserve(dicts.size());
    for (const auto& d : dicts) {
      states.push_back(state_from_dict(d.cast<py::dict>()));
      had_exp_avg.push_back(states.back().exp_avg().defined());
    }
  }
  void write_back(const py::list& dicts) const {
    for (std::size_t i = 0; i < states.size(); ++i) {
      if (!had_exp_avg[i] && states[i].exp_avg().defined()) {
        dicts[i].cast<py::dict>()["exp_avg"] = states[i].exp_avg();
      }
    }
  }
};

// A reducer that calls a Python function with a float64 tensor viewing the
// values (to be summed across processes in place), under the GIL.
tcltorch::AdafactorShard shard_of(std::vector<std::int64_t> global_shape,
                                  const py::function& reducer) {
  tcltorch::AdafactorShard shard;
  shard.global_sizes = std::move(global_shape);
  shard.all_reduce_sum = [reducer](double* values, std::size_t count) {
    py::gil_scoped_acquire gil;
    reducer(torch::from_blob(values, {static_cast<std::int64_t>(count)}, at::kDouble));
  };
  return shard;
}

Tcl_Interp* interp_at(std::uintptr_t address) {
  if (address == 0) throw std::invalid_argument("null Tcl interpreter address");
  return reinterpret_cast<Tcl_Interp*>(address);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "tcltorch core: the LibTorch Adafactor optimizer and the Tcl bridge";
  m.attr("__version__") = TCLTORCH_VERSION;

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const c10::ValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    } catch (const c10::Error& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
    }
  });

  py::class_<Adafactor>(m, "Adafactor",
                        "The C++ tcltorch::Adafactor optimizer over a list of tensors.\n"
                        "Keyword arguments are the core's option names "
                        "(lr, beta2_decay, eps1, eps2, d, ...).")
      .def(py::init([](std::vector<at::Tensor> params, const py::kwargs& kwargs) {
             auto options = options_from(kwargs);
             return std::make_unique<Adafactor>(std::move(params), options);
           }),
           py::arg("params"))
      .def("step",
           [](Adafactor& self) {
             py::gil_scoped_release release;
             self.step();
           })
      .def("zero_grad", &Adafactor::zero_grad, py::arg("set_to_none") = true,
           py::call_guard<py::gil_scoped_release>())
      .def_property(
          "lr", [](const Adafactor& self) { return self.param_groups().front().options().get_lr(); },
          [](Adafactor& self, double lr) {
            for (auto& g : self.param_groups()) g.options().set_lr(lr);
          })
      .def_property_readonly("skipped_updates", &Adafactor::skipped_updates,
                             "Parameter updates skipped by skip_nan_updates.")
      .def("options",
           [](const Adafactor& self) {
             return options_dict(
                 static_cast<const AdafactorOptions&>(self.param_groups().front().options()));
           })
      .def("state",
           [](const Adafactor& self, const at::Tensor& param) -> py::object {
             auto it = self.state().find(param.unsafeGetTensorImpl());
             if (it == self.state().end()) return py::dict();
             return state_dict_of(static_cast<const AdafactorParamState&>(*it->second));
           },
           py::arg("param"), "The state of one parameter: a dict of tensors (shared).")
      .def("save",
           [](const Adafactor& self, const std::string& path) {
             py::gil_scoped_release release;
             tcltorch::save_optimizer(self, path);
           },
           py::arg("path"))
      .def("load",
           [](Adafactor& self, const std::string& path) {
             py::gil_scoped_release release;
             tcltorch::load_optimizer(self, path);
           },
           py::arg("path"));

  m.def("validate_options", [](const py::kwargs& kwargs) { options_from(kwargs); },
        "Raises ValueError/TypeError unless the keyword arguments are valid core options.");
  m.def("validate_options_as_torch",
        [](const py::kwargs& kwargs) { options_from(kwargs, false).validate_as_torch(); },
        "As validate_options, after torch.optim.Adafactor's own checks and messages.");
  // The step in backward's rule and messages (step_in_backward.h), for the
  // Python door's own keyword arguments.
  m.def(
      "check_accumulate_steps",
      [](const py::int_& n) {
        // As a double, so that an int beyond 64 bits meets the rule too.
        if (!tcltorch::rule_accepts(tcltorch::kAccumulateStepsRule, n.cast<double>())) {
          throw py::value_error(tcltorch::accumulate_steps_error(py::str(n)));
        }
      },
      py::arg("accumulate_steps"), "Raises ValueError unless accumulate_steps is valid.");
  m.def("accumulate_steps_error", &tcltorch::accumulate_steps_error, py::arg("got"),
        "The message for a bad accumulate_steps, `got` being the value as shown.");
  m.def("gradient_twice_in_one_pass_error", &tcltorch::gradient_twice_in_one_pass_error,
        py::arg("group"), py::arg("position"), py::arg("shape"),
        "The refusal of a parameter whose gradient comes a second time in one backward pass.");
  m.def("adafactor_options", &option_table,
        "The table of Adafactor options: one dict per option (name, type, tcl, defaults "
        "per variant, rule, doc, ...), in the table's order.");
  m.def("adafactor_init_state",
        [](const at::Tensor& param, const py::kwargs& kwargs) {
          AdafactorParamState state;
          tcltorch::adafactor_init_state(param, options_from(kwargs), state);
          return state_dict_of(state);
        },
        py::arg("param"), "A new state dict for one parameter (zeros; step 0).");
  m.def("adafactor_step",
        [](const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
           const py::list& states, const py::kwargs& kwargs) {
          const auto options = options_from(kwargs);
          if (params.size() != grads.size() || params.size() != states.size()) {
            throw py::value_error("params, grads and states must have the same length");
          }
          CoreStates core(states);
          std::int64_t skipped = 0;
          {
            py::gil_scoped_release release;
            for (std::size_t i = 0; i < params.size(); ++i) {
              if (!tcltorch::adafactor_step(params[i], grads[i], core.states[i], options)) ++skipped;
            }
          }
          core.write_back(states);
          return skipped;
        },
        py::arg("params"), py::arg("grads"), py::arg("states"),
        "One step of each parameter with the fused core; states are updated in place. "
        "Releases the GIL. Returns how many updates skip_nan_updates skipped.");

  m.def("adafactor_factored_dims",
        [](std::vector<std::int64_t> shape, const py::kwargs& kwargs) -> py::object {
          auto dims = tcltorch::adafactor_factored_dims(shape, options_from(kwargs));
          if (!dims) return py::none();
          return py::make_tuple(dims->first, dims->second);
        },
        py::arg("shape"), "The (row, column) dims factored for this shape, or None.");
  m.def("adafactor_init_state_sharded",
        [](const at::Tensor& local, std::vector<std::int64_t> global_shape,
           const py::kwargs& kwargs) {
          AdafactorParamState state;
          auto shard = shard_of(std::move(global_shape), py::function());
          tcltorch::adafactor_init_state(local, options_from(kwargs), state, &shard);
          return state_dict_of(state);
        },
        py::arg("local"), py::arg("global_shape"),
        "A new state dict for one shard (split along dim 0) of a parameter.");
  m.def("adafactor_step_sharded",
        [](const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
           const py::list& states, const std::vector<std::vector<std::int64_t>>& global_shapes,
           const py::function& reducer, const py::kwargs& kwargs) {
          const auto options = options_from(kwargs);
          if (params.size() != grads.size() || params.size() != states.size() ||
              params.size() != global_shapes.size()) {
            throw py::value_error("params, grads, states and global_shapes must have the same length");
          }
          CoreStates core(states);
          std::vector<tcltorch::AdafactorShard> shards;
          for (std::size_t i = 0; i < params.size(); ++i) {
            shards.push_back(shard_of(global_shapes[i], reducer));
          }
          std::int64_t skipped = 0;
          {
            py::gil_scoped_release release;
            for (std::size_t i = 0; i < params.size(); ++i) {
              if (!tcltorch::adafactor_step(params[i], grads[i], core.states[i], options,
                                            &shards[i])) {
                ++skipped;
              }
            }
          }
          core.write_back(states);
          return skipped;
        },
        py::arg("params"), py::arg("grads"), py::arg("states"), py::arg("global_shapes"),
        py::arg("reducer"),
        "One step of each local shard; reducer(t) must sum the float64 tensor t across "
        "the processes in place (e.g. torch.distributed.all_reduce).");

  // A checkpoint file as ([(group size, core options)], {index: state}); the
  // Python side (tcltorch/checkpoint.py) makes the state dict of it.
  m.def("read_adafactor_checkpoint",
        [](const std::string& path) {
          tcltorch::AdafactorCheckpoint c;
          {
            py::gil_scoped_release release;
            c = tcltorch::read_adafactor_checkpoint(path);
          }
          py::list groups;
          for (const auto& g : c.groups) groups.append(py::make_tuple(g.size, options_dict(g.options)));
          py::dict state;
          for (const auto& [index, s] : c.state) state[py::int_(index)] = state_dict_of(s);
          return py::make_tuple(groups, state);
        },
        py::arg("path"));
  m.def("write_adafactor_checkpoint",
        [](const std::string& path, const py::list& groups, const py::dict& state) {
          tcltorch::AdafactorCheckpoint c;
          for (const auto& g : groups) {
            auto pair = g.cast<py::tuple>();
            c.groups.push_back({pair[0].cast<std::int64_t>(),
                                options_from(py::reinterpret_borrow<py::kwargs>(pair[1]))});
          }
          for (const auto& [index, s] : state) {
            c.state.emplace(index.cast<std::int64_t>(), state_from_dict(s.cast<py::dict>()));
          }
          py::gil_scoped_release release;
          tcltorch::write_adafactor_checkpoint(c, path);
        },
        py::arg("path"), py::arg("groups"), py::arg("state"));
  tcltorch::python::def_group_step(m);

  m.def("_set_fused_enabled", &tcltorch::detail::set_fused_enabled, py::arg("enabled"),
        "Tests and benchmarks: allow the fused CPU kernel (True) or force the ATen-op path.");
  m.def("_fused_enabled", &tcltorch::detail::fused_enabled);
  m.def("_cpu_capability", &tcltorch::detail::fused_cpu_capability,
        "The instruction set of the fused loops: 'avx2' or 'default'.");

  m.def("tcl_get_tensor",
        [](std::uintptr_t interp, const std::string& handle) {
          return tcltorch::tcl::bridge_get_tensor(interp_at(interp), handle);
        },
        py::arg("interp"), py::arg("handle"),
        "The tensor behind a Tcl handle of the interpreter at this address.");
  m.def("tcl_add_tensor",
        [](std::uintptr_t interp, const at::Tensor& tensor) {
          return tcltorch::tcl::bridge_add_tensor(interp_at(interp), tensor);
        },
        py::arg("interp"), py::arg("tensor"),
        "Registers a tensor in the interpreter and returns its handle.");
}
