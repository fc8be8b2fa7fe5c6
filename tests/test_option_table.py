"""The one table of Adafactor options (csrc/include/tcltorch/adafactor_options.h)
and the views every door derives from it: the C++/Python keywords and their
checks, the Python group keys and defaults, the Tcl options and their checks,
and the docs' option tables."""
from __future__ import annotations

import importlib.util
import inspect
import re
from pathlib import Path

import pytest
import torch

import tcltorch
from tcltorch import _C
from tcltorch.tcl import TclError

ROOT = Path(__file__).resolve().parents[1]
TABLE = _C.adafactor_options()
NAMES = [o["name"] for o in TABLE]
VARIANTS = next(o for o in TABLE if o["name"] == "variant")["choices"]

# A value each rule refuses (for the core) and one it accepts.
BAD_FOR_RULE = {"non_negative": -1.0, "positive": 0.0, "non_positive": 0.5,
                "unit_interval_open": 1.0, "at_least_one": 0.5}
GOOD_FOR_RULE = {"non_negative": 0.0, "positive": 0.25, "non_positive": 0.0,
                 "unit_interval_open": 0.0, "at_least_one": 1.0, "any": 0.0}


def snake(camel: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), camel)


def test_table_is_well_formed():
    assert len(set(NAMES)) == len(NAMES)
    assert len({o["tcl"] for o in TABLE}) == len(TABLE)
    positional = [o["tcl_positional"] for o in TABLE]
    assert positional == sorted(positional, reverse=True)  # positional rows first
    for o in TABLE:
        assert o["doc"] and not o["doc"].endswith("."), o["name"]
        assert set(o["defaults"]) == set(VARIANTS)
        for variant, value in o["defaults"].items():
            if o["type"] == "enum":
                assert value in o["choices"]
            elif o["type"] in ("double", "int"):
                assert value is not None and o["rule"] in GOOD_FOR_RULE
            if o["type"] == "optional_double":
                assert o["none_doc"], o["name"]
        for ref in re.findall(r"\{(\w+)\}", o["doc"]):
            assert ref in NAMES, (o["name"], ref)


def test_core_keywords_and_options_dict_are_the_table():
    p = torch.zeros(3)
    assert list(_C.Adafactor([p]).options()) == NAMES
    torch_defaults = {o["name"]: o["defaults"]["torch"] for o in TABLE}
    assert _C.Adafactor([p]).options() == torch_defaults
    for o in TABLE:  # every keyword is accepted with its default
        value = o["defaults"]["transformers"]
        assert _C.Adafactor([p], **{o["name"]: value}).options()[o["name"]] == value
    with pytest.raises(TypeError, match="unexpected keyword argument 'nonsense'"):
        _C.Adafactor([p], nonsense=1)


@pytest.mark.parametrize("o", [o for o in TABLE if o["rule"] in BAD_FOR_RULE],
                         ids=lambda o: o["name"])
def test_core_rule_of_every_number(o):
    p = torch.zeros(3)
    bad = BAD_FOR_RULE[o["rule"]]
    value = int(bad) if o["type"] == "int" and bad == int(bad) else bad
    if o["type"] == "int" and value == bad and isinstance(value, float):
        pytest.skip("no integer breaks this rule")
    with pytest.raises(ValueError, match=re.escape(f"{o['name']} must be {o['rule_text']}")):
        _C.validate_options(**{o["name"]: value})
    good = GOOD_FOR_RULE[o["rule"]]
    _C.validate_options(**{o["name"]: int(good) if o["type"] == "int" else good})
    if o["type"] != "int":
        with pytest.raises(ValueError, match=f"{o['name']} must be a finite number"):
            _C.validate_options(**{o["name"]: float("inf")})


def test_enum_choices_are_checked():
    for o in TABLE:
        if o["type"] == "enum":
            with pytest.raises(ValueError, match=o["name"]):
                _C.validate_options(**{o["name"]: "no_such_choice"})


def test_python_group_keys_and_defaults_are_the_table():
    p = torch.nn.Parameter(torch.zeros(3))
    for variant in VARIANTS:
        group = tcltorch.Adafactor([p], variant=variant).param_groups[0]
        # external_lr: the Python door's own record of transformers' lr=None
        keys = set(group) - {"params", "eps", "foreach", "external_lr"}
        assert keys == set(NAMES) - {"eps1", "eps2"}
        for o in TABLE:
            if o["name"] in ("lr", "beta2_decay", "eps1", "eps2", "d", "weight_decay",
                             "maximize"):
                continue  # torch's signature and its defaults
            expected = o["defaults"][variant]
            if o["name"] == "momentum_dtype":  # Python spells it as a torch dtype
                expected = {"none": None, "bfloat16": torch.bfloat16}[expected]
            assert group[o["name"]] == expected, (variant, o["name"])
    sig = inspect.signature(tcltorch.Adafactor.__init__)
    for o in TABLE:
        if o["name"] not in ("eps1", "eps2"):
            assert o["name"] in sig.parameters
    with pytest.raises(TypeError, match="unexpected keyword argument 'nonsense'"):
        tcltorch.Adafactor([p], nonsense=1)


def test_tcl_options_are_the_table(tcl):
    t = tcl.eval("torch::zeros {3 3}")
    with pytest.raises(TclError) as info:
        tcl.eval(f"torch::optimizer_adafactor -parameters {t} -x 1")
    listed = re.findall(r"-(\w+)", info.value.message.split(": must be ")[1])
    # door-level arguments around the table's
    assert listed == ["parameters"] + [o["tcl"] for o in TABLE] + ["groups", "shardState", "stepInBackward",
                                                                  "accumulateSteps"]
    for o in TABLE:  # every snake_case spelling works
        value = o["tcl_default"] or o["defaults"]["transformers"]
        if value is None:
            value = -1 if o["tcl_minus_one_unsets"] else 1e-30
        if isinstance(value, bool):
            value = int(value)
        tcl.eval(f"torch::optimizer_adafactor -parameters {t} -{snake(o['tcl'])} {value}")


@pytest.mark.parametrize("o", [o for o in TABLE if o["rule"] in BAD_FOR_RULE
                               and o["tcl_form"] == "plain"], ids=lambda o: o["tcl"])
def test_tcl_rule_of_every_number(tcl, o):
    t = tcl.eval("torch::zeros {3 3}")
    bad = BAD_FOR_RULE[o["rule"]]
    word = str(int(bad)) if o["type"] == "int" else repr(bad)
    with pytest.raises(TclError) as info:
        tcl.eval(f"torch::optimizer_adafactor -parameters {t} -{o['tcl']} {word}")
    assert info.value.code == ("TORCH", "VALUE", f"-{o['tcl']}", word)
    assert o["rule_text"] in info.value.message


def load_docs_tool():
    spec = importlib.util.spec_from_file_location(
        "adafactor_option_docs", ROOT / "scripts" / "adafactor_option_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_option_tables_are_generated_from_the_table():
    tool = load_docs_tool()
    for door, page in tool.PAGES.items():
        text = page.read_text()
        assert tool.rewrite(text, door, TABLE) == text, (
            f"{page.relative_to(ROOT)} is stale: run python scripts/adafactor_option_docs.py")
        for o in TABLE:
            assert (f"`-{o['tcl']}`" if door == "tcl" else f"{o['name']}") in text


# Written by tcltorch 0.1.0 before the table existed (tests/data/checkpoints/
# make_checkpoints.py, run with that release's tcltorch._C): each holds the
# options, the state after 3 steps, and what they were.
OLD_CHECKPOINTS = ["adafactor_options_0.1.0", "adafactor_defaults_0.1.0"]


@pytest.mark.parametrize("name", OLD_CHECKPOINTS)
def test_checkpoints_written_before_the_table_load(name, tmp_path):
    data = ROOT / "tests" / "data" / "checkpoints"
    expected = torch.load(data / f"{name}_expected.pt")
    params = [p.clone() for p in expected["params"]]
    opt = _C.Adafactor(params)
    opt.load(str(data / f"{name}.pt"))
    # Options added since take their defaults (for the file's variant).
    got = opt.options()
    assert {k: got[k] for k in expected["options"]} == expected["options"]
    variant = expected["options"]["variant"]
    for o in TABLE:
        if o["name"] not in expected["options"]:
            assert got[o["name"]] == o["defaults"][variant], o["name"]
    for p, state in zip(params, expected["state"]):
        mine = opt.state(p)
        assert set(mine) == set(state)
        for key in state:
            assert torch.equal(mine[key], state[key]), key
    # and it saves back to the same options
    opt.save(str(tmp_path / "again.pt"))
    again = _C.Adafactor([p.clone() for p in params])
    again.load(str(tmp_path / "again.pt"))
    assert again.options() == got
