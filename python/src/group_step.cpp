// tcltorch.Adafactor.step in one call into C++: for every parameter group, the
// core's options, the gradients and state dicts of its parameters, and the
// core's step (tcltorch::adafactor_step) with the GIL released.
//
// Reading ~25 group values and converting them at every step cost more than a
// small step, so each group's options are kept here and refreshed where a
// group value is no longer the same object (an LR scheduler's new lr, an edit
// of param_groups). What a group value means stays in Python: a changed value
// is converted by optim.py's function (`convert`), and the rules are the
// core's (AdafactorOptions::validate).
#include "group_step.h"

#include <torch/csrc/Dtype.h>
#include <torch/csrc/autograd/python_variable.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "py_convert.h"
#include "tcltorch/adafactor.h"

namespace tcltorch::python {
namespace {

// A value whose identity tells that it did not change: objects of exact
// immutable built-in types, torch dtypes, and tuples of them. Any other value
// (a Tensor lr, which fill_ changes in place; a list) is converted again at
// every step.
bool immutable(PyObject* v) {
  if (v == Py_None || PyFloat_CheckExact(v) || PyLong_CheckExact(v) || PyBool_Check(v) ||
      PyUnicode_CheckExact(v) || THPDtype_Check(v)) {
    return true;
  }
  if (PyTuple_CheckExact(v)) {
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(v); ++i) {
      if (!immutable(PyTuple_GET_ITEM(v, i))) return false;
    }
    return true;
  }
  return false;
}

// optim.py's _is_dtensor: FSDP2's parameters, stepped through Python's _Sharded.
bool is_dtensor(PyObject* p) { return std::strcmp(Py_TYPE(p)->tp_name, "DTensor") == 0; }

py::object steal(PyObject* p) {
  if (!p) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(p);
}

// A borrowed value of a dict, or nullptr when the key is missing.
PyObject* dict_get(PyObject* d, PyObject* key) {
  PyObject* v = PyDict_GetItemWithError(d, key);
  if (!v && PyErr_Occurred()) throw py::error_already_set();
  return v;
}

std::string type_name(PyObject* o) { return Py_TYPE(o)->tp_name; }

// A dict's version tag (CPython 3.11: every insertion, deletion or
// replacement of a value in any dict takes a new value of one global
// counter): the same tag on the same dict object, held, means the same
// contents. 0 where there is none (other Python versions, non-dicts): then
// the contents are compared key by key.
std::uint64_t dict_tag(PyObject* d) {
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
  if (PyDict_Check(d)) return reinterpret_cast<PyDictObject*>(d)->ma_version_tag;
#endif
  (void)d;
  return 0;
}

// The keys of a state dict, in AdafactorParamState's order.
constexpr std::size_t kStateKeyCount = 5;
constexpr std::size_t kExpAvg = 4;
PyObject* state_key(std::size_t k) {
  const StateKeys& keys = state_keys();
  PyObject* all[kStateKeyCount] = {keys.step, keys.row_var, keys.col_var, keys.variance,
                                   keys.exp_avg};
  return all[k];
}
const at::Tensor& state_tensor(const AdafactorParamState& s, std::size_t k) {
  switch (k) {
    case 0: return s.step();
    case 1: return s.row_var();
    case 2: return s.col_var();
    case 3: return s.variance();
    default: return s.exp_avg();
  }
}

class GroupStepper {
 public:
  GroupStepper(const py::dict& watch, py::object convert, const py::tuple& flag_keys,
               py::object flag, py::object before_step, py::object sharded_step,
               py::object add_skipped)
      : convert_(std::move(convert)),
        flag_(std::move(flag)),
        before_step_(std::move(before_step)),
        sharded_step_(std::move(sharded_step)),
        add_skipped_(std::move(add_skipped)),
        params_key_(py::str("params")),
        hash_name_(steal(PyUnicode_InternFromString("__hash__"))),
        tensor_hash_(py::module_::import("torch").attr("Tensor").attr("__dict__")["__hash__"]) {
    for (const auto& info : kAdafactorOptionTable) {
      py::str name(info.name);
      if (!watch.contains(name)) {
        throw py::value_error(std::string("watch lacks the option ") + info.name);
      }
      std::uint64_t mask = 0;
      for (const auto& key : watch[name].cast<py::tuple>()) mask |= bit(key);
      option_names_.push_back(name);
      option_masks_.push_back(mask);
    }
    for (const auto& key : flag_keys) flag_mask_ |= bit(key);
  }

  void step(py::handle opt, py::handle param_groups, py::handle state) {
    auto groups = steal(PySequence_Tuple(param_groups.ptr()));
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(groups.ptr()); ++i) {
      PyObject* group = PyTuple_GET_ITEM(groups.ptr(), i);
      auto entry = entry_for(group, static_cast<std::size_t>(i));
      auto params = steal(PySequence_Tuple(group_params(group)));
      step_group(opt, *entry, params.ptr(), state);
      if (entry->slots.size() > static_cast<std::size_t>(PyTuple_GET_SIZE(params.ptr()))) {
        forget_other_params(*entry, params.ptr());
      }
    }
  }

  // Forgets every group's options and states (after load_state_dict: the
  // states held here would keep the old tensors alive until the next step).
  void clear() { entries_.clear(); }

  void step_params(py::handle opt, py::handle group, py::handle params, py::handle state) {
    auto entry = entry_for(group.ptr(), 0);
    auto list = THPVariable_Check(params.ptr()) ? py::make_tuple(params)
                                                : steal(PySequence_Tuple(params.ptr()));
    step_group(opt, *entry, list.ptr(), state);
  }

 private:
  // A parameter's state dict, its values last seen (by the keys of
  // state_key) and the core's state made of them.
  struct Slot {
    py::object param, dict;
    py::object seen[kStateKeyCount];
    std::uint64_t dict_tag = 0;  // of `dict` when `seen` was last checked
    AdafactorParamState state;
  };

  // One parameter group's options, as of the group values last seen, and its
  // parameters' states.
  struct Entry {
    py::object group;               // held, so that its address stays its own
    std::vector<py::object> seen;   // per watched key; null: missing
    std::shared_ptr<const AdafactorOptions> options;
    bool flag = false;  // call before_step
    bool valid = false;
    std::unordered_map<PyObject*, std::shared_ptr<Slot>> slots;  // by parameter
    std::vector<std::shared_ptr<Slot>> order;  // the slots of the last step, in its order
    // Per entry of `order`: the tag of optimizer.state (`state`, held) when
    // its slot's dict was last found there by lookup (0: unknown). While
    // optimizer.state keeps that tag, the parameter still has that dict.
    std::vector<std::uint64_t> order_tag;
    py::object state;
  };

  std::uint64_t bit(py::handle key) {
    py::str k = py::reinterpret_borrow<py::object>(key);
    for (std::size_t i = 0; i < keys_.size(); ++i) {
      if (keys_[i].equal(k)) return std::uint64_t{1} << i;
    }
    if (keys_.size() == 64) throw py::value_error("more than 64 watched group keys");
    PyObject* interned = k.inc_ref().ptr();
    PyUnicode_InternInPlace(&interned);
    keys_.push_back(py::reinterpret_steal<py::object>(interned));
    return std::uint64_t{1} << (keys_.size() - 1);
  }

  // Drops the states of parameters no longer in the group.
  static void forget_other_params(Entry& e, PyObject* params) {
    std::unordered_set<PyObject*> current;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(params); ++i) {
      current.insert(PyTuple_GET_ITEM(params, i));
    }
    std::erase_if(e.slots, [&](const auto& kv) { return !current.count(kv.first); });
    e.order.clear();
    e.order_tag.clear();
  }

  PyObject* group_params(PyObject* group) {
    if (!PyDict_Check(group)) {
      throw py::type_error("a parameter group must be a dict, got " + type_name(group));
    }
    PyObject* params = dict_get(group, params_key_.ptr());
    if (!params) throw py::key_error("params");
    return params;
  }

  std::shared_ptr<Entry> entry_for(PyObject* group, std::size_t hint) {
    if (hint < entries_.size() && entries_[hint]->group.ptr() == group) return entries_[hint];
    for (const auto& e : entries_) {
      if (e->group.ptr() == group) return e;
    }
    // Groups nobody else holds any more (replaced by load_state_dict).
    std::erase_if(entries_, [](const auto& e) { return Py_REFCNT(e->group.ptr()) == 1; });
    auto e = std::make_shared<Entry>();
    e->group = py::reinterpret_borrow<py::object>(group);
    e->seen.resize(keys_.size());
    entries_.push_back(e);
    return e;
  }

  void refresh(Entry& e) {
    PyObject* group = e.group.ptr();
    if (!PyDict_Check(group)) {
      throw py::type_error("a parameter group must be a dict, got " + type_name(group));
    }
    std::uint64_t dirty = 0;
    for (std::size_t i = 0; i < keys_.size(); ++i) {
      PyObject* v = dict_get(group, keys_[i].ptr());
      if (e.valid && v && v == e.seen[i].ptr() && immutable(v)) continue;
      dirty |= std::uint64_t{1} << i;
      e.seen[i] = py::reinterpret_borrow<py::object>(v);
    }
    if (!dirty) return;
    // Until the new values pass, the group's next step converts them all again.
    e.valid = false;
    auto options = e.options ? std::make_shared<AdafactorOptions>(*e.options)
                             : std::make_shared<AdafactorOptions>();
    for (std::size_t j = 0; j < kAdafactorOptionCount; ++j) {
      if (!(option_masks_[j] & dirty)) continue;
      const auto& info = kAdafactorOptionTable[j];
      py::object value = convert_(e.group, option_names_[j]);
      set_adafactor_option(*options, info, option_value(info, value));
    }
    options->validate();
    if (flag_mask_ & dirty) {
      int flag = PyObject_IsTrue(flag_(e.group).ptr());
      if (flag < 0) throw py::error_already_set();
      e.flag = flag;
    }
    e.options = std::move(options);
    e.valid = true;
  }

  // Steps the tensors of the tuple `params` that have a gradient.
  void step_group(py::handle opt, Entry& e, PyObject* params, py::handle state) {
    refresh(e);
    const auto options = e.options;  // a step elsewhere may refresh e meanwhile
    const Py_ssize_t n = PyTuple_GET_SIZE(params);
    if (e.flag && n > 0) {
      // transformers' reported lr needs RMS(param) of the group's first
      // parameter before its step.
      PyObject* all = group_params(e.group.ptr());
      auto first = steal(PySequence_GetItem(all, 0));
      for (Py_ssize_t i = 0; i < n; ++i) {
        if (PyTuple_GET_ITEM(params, i) == first.ptr()) {
          before_step_(opt, e.group);
          break;
        }
      }
    }
    // What the math needs, held (not borrowed) while the GIL is released.
    struct Work {
      const at::Tensor* param;  // inside its Python object, which `params` holds
      at::Tensor grad;
      std::shared_ptr<Slot> slot;
      bool had_exp_avg;
    };
    std::vector<Work> work;
    work.reserve(n);
    py::list sharded;
    // Positions whose dict was looked up in optimizer.state in this step.
    const std::uint64_t state_tag = dict_tag(state.ptr());
    const std::uint64_t trusted = e.state.ptr() == state.ptr() ? state_tag : 0;
    std::vector<std::size_t> looked_up;
    bool all_found = true;  // no lookup made a dict (a defaultdict's factory)
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyObject* obj = PyTuple_GET_ITEM(params, i);
      if (!THPVariable_Check(obj)) {
        throw py::type_error("optimizer can only optimize Tensors, but one of the params is " +
                             type_name(obj));
      }
      const at::Tensor& p = THPVariable_Unpack(obj);
      const at::Tensor& grad = p.grad();
      if (!grad.defined()) continue;
      if (is_dtensor(obj)) {
        sharded.append(obj);
        continue;
      }
      auto slot =
          slot_for(e, static_cast<std::size_t>(i), obj, p, state, *options, trusted,
                   looked_up, all_found);
      const bool had = slot->state.exp_avg().defined();
      work.push_back({&p, grad, std::move(slot), had});
    }
    // The lookups' answers hold as of state_tag if none of them changed
    // optimizer.state (a factory, a subclass's __getitem__). Python code runs
    // from here on (the callbacks below); a change it makes to
    // optimizer.state changes the tag.
    const std::uint64_t found_tag =
        all_found && state_tag != 0 && dict_tag(state.ptr()) == state_tag ? state_tag : 0;
    for (const std::size_t position : looked_up) e.order_tag[position] = found_tag;
    e.state = py::reinterpret_borrow<py::object>(state);
    std::int64_t skipped = 0;
    if (!work.empty()) {
      py::gil_scoped_release release;
      at::NoGradGuard no_grad;
      for (auto& w : work) {
        if (!adafactor_step(*w.param, w.grad, w.slot->state, *options)) ++skipped;
      }
    }
    // The state a step added: exp_avg, when beta1 was turned on later.
    for (auto& w : work) {
      if (!w.had_exp_avg && w.slot->state.exp_avg().defined()) {
        auto t = py::cast(w.slot->state.exp_avg());
        if (PyDict_SetItem(w.slot->dict.ptr(), state_keys().exp_avg, t.ptr()) != 0) {
          throw py::error_already_set();
        }
        w.slot->seen[kExpAvg] = std::move(t);
        w.slot->dict_tag = dict_tag(w.slot->dict.ptr());
      }
    }
    if (skipped) add_skipped_(opt, skipped);
    if (!sharded.empty()) sharded_step_(opt, e.group, sharded);
  }

  // optimizer.state[param] as the core's state, kept from the last step while
  // the dict holds the same tensors: reading it again would copy five tensor
  // references, each of which touches its Python object twice.
  // `position`: of the parameter in what is stepped, where its slot was last
  // time (checked; the map is the truth).
  // `trusted`: the tag optimizer.state has now, if it is the one the last
  // lookups were made in (else 0). A slot found where it was, whose dict was
  // looked up at this tag and still has its own tag, is taken as it is:
  // nothing in optimizer.state changed. `found` turns false where a lookup
  // made a dict (a defaultdict's factory).
  std::shared_ptr<Slot> slot_for(Entry& e, std::size_t position, PyObject* obj,
                                 const at::Tensor& p, py::handle state,
                                 const AdafactorOptions& options, std::uint64_t trusted,
                                 std::vector<std::size_t>& looked_up, bool& found) {
    if (trusted != 0 && position < e.order.size() && e.order_tag[position] == trusted) {
      const auto& slot = e.order[position];
      if (slot && slot->param.ptr() == obj && slot->dict_tag != 0 &&
          dict_tag(slot->dict.ptr()) == slot->dict_tag) {
        return slot;
      }
    }
    auto d = state_of(state.ptr(), obj, found);
    if (!PyDict_Check(d.ptr())) {
      throw py::type_error("the optimizer state of a parameter must be a dict, got " +
                           type_name(d.ptr()));
    }
    if (e.order.size() <= position) {
      e.order.resize(position + 1);
      e.order_tag.resize(position + 1, 0);
    }
    looked_up.push_back(position);
    auto& hint = e.order[position];
    if (!hint || hint->param.ptr() != obj) {
      auto it = e.slots.find(obj);
      hint = it == e.slots.end() ? nullptr : it->second;
    }
    auto& slot = hint;
    if (slot && slot->dict.ptr() == d.ptr()) {
      const std::uint64_t tag = dict_tag(d.ptr());
      bool same = tag != 0 && tag == slot->dict_tag;
      if (!same) {
        same = true;
        for (std::size_t k = 0; k < kStateKeyCount && same; ++k) {
          same = dict_get(d.ptr(), state_key(k)) == slot->seen[k].ptr();
        }
      }
      if (same) {
        slot->dict_tag = tag;
        return slot;
      }
    }
    auto fresh = std::make_shared<Slot>();
    fresh->param = py::reinterpret_borrow<py::object>(obj);
    fresh->dict = d;
    if (PyDict_GET_SIZE(d.ptr()) == 0) {
      // Created lazily, as torch does: wrappers (ZeroRedundancyOptimizer,
      // distributed checkpoints) rely on it.
      adafactor_init_state(p, options, fresh->state);
      for (std::size_t k = 0; k < kStateKeyCount; ++k) {
        const at::Tensor& t = state_tensor(fresh->state, k);
        if (!t.defined()) continue;
        auto v = py::cast(t);
        if (PyDict_SetItem(d.ptr(), state_key(k), v.ptr()) != 0) throw py::error_already_set();
        fresh->seen[k] = std::move(v);
      }
    } else {
      fresh->state = state_from_dict(d);
      for (std::size_t k = 0; k < kStateKeyCount; ++k) {
        fresh->seen[k] = py::reinterpret_borrow<py::object>(dict_get(d.ptr(), state_key(k)));
      }
    }
    fresh->dict_tag = dict_tag(d.ptr());
    e.slots[obj] = fresh;
    slot = fresh;
    return slot;
  }

  // optimizer.state[param]. Tensor.__hash__ is id(self), a Python function:
  // for a parameter whose type keeps it, the dict is probed with that hash
  // directly (a missing key still goes through the defaultdict's __missing__).
  py::object state_of(PyObject* state, PyObject* obj, bool& found) {
#if PY_VERSION_HEX < 0x030D0000
    if (PyDict_Check(state) &&
        _PyType_Lookup(Py_TYPE(obj), hash_name_.ptr()) == tensor_hash_.ptr()) {
      // hash(id(obj)): an address is below the modulus of int hashes.
      const auto hash = static_cast<Py_hash_t>(reinterpret_cast<std::uintptr_t>(obj));
      PyObject* d = _PyDict_GetItem_KnownHash(state, obj, hash);
      if (d) return py::reinterpret_borrow<py::object>(d);
      if (PyErr_Occurred()) throw py::error_already_set();
    }
#endif
    found = false;
    return steal(PyObject_GetItem(state, obj));  // a defaultdict makes the empty dict
  }

  py::object convert_, flag_, before_step_, sharded_step_, add_skipped_;
  py::object params_key_, hash_name_, tensor_hash_;
  std::vector<py::object> keys_;              // the group keys watched, interned
  std::vector<py::object> option_names_;      // indexed like kAdafactorOptionTable
  std::vector<std::uint64_t> option_masks_;   // the keys each option is read from
  std::uint64_t flag_mask_ = 0;               // the keys `flag` reads
  std::vector<std::shared_ptr<Entry>> entries_;
};

}  // namespace

void def_group_step(py::module_& m) {
  py::class_<GroupStepper>(
      m, "GroupStepper",
      "tcltorch.Adafactor's step: one call steps every parameter group.\n\n"
      "Each group's core options are kept and refreshed where a group value is no longer\n"
      "the same object: convert(group, name) gives the option `name` from the group, for\n"
      "each option whose keys (watch[name], a tuple of group keys) changed; then the\n"
      "options are validated. flag(group), on a change of flag_keys, says whether\n"
      "before_step(optimizer, group) runs before the step of the group's first parameter.\n"
      "DTensor parameters go to sharded_step(optimizer, group, params); the updates that\n"
      "skip_nan_updates skipped to add_skipped(optimizer, count).")
      .def(py::init<const py::dict&, py::object, const py::tuple&, py::object, py::object,
                    py::object, py::object>(),
           py::kw_only(), py::arg("watch"), py::arg("convert"), py::arg("flag_keys"),
           py::arg("flag"), py::arg("before_step"), py::arg("sharded_step"),
           py::arg("add_skipped"))
      .def("step", &GroupStepper::step, py::arg("optimizer"), py::arg("param_groups"),
           py::arg("state"),
           "Steps every parameter with a gradient; state is optimizer.state (a "
           "defaultdict(dict)), whose empty dicts get a new state.")
      .def("clear", &GroupStepper::clear,
           "Forgets the options and states kept (they are read again at the next step).")
      .def("step_params", &GroupStepper::step_params, py::arg("optimizer"), py::arg("group"),
           py::arg("params"), py::arg("state"),
           "Steps `params` (a tensor or a sequence of tensors of group['params']) that "
           "have a gradient, with the group's options; no optimizer hooks.");
}

}  // namespace tcltorch::python
