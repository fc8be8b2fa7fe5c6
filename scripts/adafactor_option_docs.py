"""Writes the Adafactor option tables of the docs from the core's table
(csrc/include/tcltorch/adafactor_options.h, read through tcltorch._C).

    python scripts/adafactor_option_docs.py          # rewrite the docs
    python scripts/adafactor_option_docs.py --check  # exit 1 if a doc is stale

Each table sits between `<!-- BEGIN adafactor-options:<door> -->` and
`<!-- END adafactor-options:<door> -->`; the rest of each page is left alone.
tests/test_option_table.py runs the check.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = {"tcl": ROOT / "docs/tcl/optimizer_adafactor.md",
         "python": ROOT / "docs/python.md",
         "cpp": ROOT / "docs/cpp.md"}

# The Tcl command's door-level arguments (not Adafactor options).
TCL_DOOR_FIRST = [
    ("`-parameters` *list*", "required",
     "a tensor handle, a module handle (all its parameters), or a list of them. Tensors must be "
     "floating-point leaf tensors; duplicates are used once."),
]
TCL_DOOR_LAST = [
    ("`-groups` *list*", "none",
     "parameter groups, each a list `{-parameters ... ?option value ...?}` whose options override "
     "the command's; see [PARAMETER GROUPS](#parameter-groups)."),
    ("`-shardState` *bool*", "false",
     "ZeRO stage 1 over the interpreter's process group (see "
     "[`torch::distributed_init`](distributed_init.md)): each rank keeps the state of its share of "
     "the parameters only (whole parameters, balanced by bytes over all groups of `-groups`, each "
     "stepped with its group's options), steps those, then every parameter "
     "is broadcast from the rank that steps it; a collective at each "
     "[`torch::optimizer_step`](optimizer_step.md). With the same gradients on every rank (see "
     "[`torch::distributed_data_parallel`](distributed_data_parallel.md)) the parameters equal the "
     "unsharded optimizer's bit for bit. [`torch::optimizer_save`](optimizer_save.md) and "
     "`torch::optimizer_load` are then collective, and `state_bytes` of "
     "[`torch::optimizer_state`](optimizer_state.md) counts this rank's share. Without a group: "
     "`TORCH DISTRIBUTED STATE`."),
    ("`-stepInBackward` *bool*", "false",
     "step each parameter inside [`torch::tensor_backward`](tensor_backward.md), as soon as its "
     "gradient is accumulated, and free that gradient: a training step then holds about one "
     "parameter's gradient instead of all of them, with the same bits as the usual step. "
     "[`torch::optimizer_step`](optimizer_step.md) then does nothing; see "
     "[STEP IN BACKWARD](#step-in-backward). Not with `-shardState 1` nor for the parameters of "
     "a [`torch::distributed_data_parallel`](distributed_data_parallel.md) module: `TORCH VALUE`."),
    ("`-accumulateSteps` *int*", "1",
     "with `-stepInBackward 1`: the gradients of this many backward passes add up and the steps "
     "run inside the last of them. `>= 1`. Above 1, the passes must come one after another; see "
     "[STEP IN BACKWARD](#step-in-backward)."),
]
TCL_TYPES = {"double": "double", "optional_double": "double", "bool": "bool", "int": "int",
             "enum": "name"}
CPP_TYPES = {"double": "double", "optional_double": "std::optional<double>", "bool": "bool",
             "int": "std::int64_t", "enum": None}
# Named in torch.optim.Adafactor's signature, with its defaults.
TORCH_ARGUMENTS = ("lr", "beta2_decay", "eps1", "eps2", "d", "weight_decay", "maximize")
DECAY_RATE = ("Tcl spells it as the decay rate: -1.0 is the default schedule `c = -0.8`; a "
              "positive value `c` means `1 - t^-c`; another negative value `x` means `1 - t^x`.")


def options() -> list[dict]:
    from tcltorch import _C

    return _C.adafactor_options()


def render_doc(text: str, door: str, by_name: dict) -> str:
    def name(match):
        o = by_name[match.group(1)]
        return f"`-{o['tcl']}`" if door == "tcl" else f"`{o['name']}`"

    return re.sub(r"\{(\w+)\}", name, text)


def show(value, door: str) -> str:
    if value is None:
        return "unset" if door != "python" else "`None`"
    if isinstance(value, bool):
        if door == "python":
            return f"`{value}`"
        return "true" if value else "false"
    if isinstance(value, str):
        return f"`\"{value}\"`" if door == "python" else f"`{value}`"
    return repr(value)


def default_cell(o: dict, door: str) -> str:
    if door == "tcl" and o["tcl_default"] is not None:
        return f"`{o['tcl_default']}`" if o["type"] == "enum" else o["tcl_default"]
    values = dict(o["defaults"])
    if o["name"] == "variant" or (door == "python" and o["name"] in TORCH_ARGUMENTS):
        # The variant's own default is the default variant; torch's arguments
        # keep torch's defaults in Python's signature.
        values = {"torch": values["torch"]}
    first = next(iter(values.values()))
    if door == "tcl" and o["tcl_minus_one_unsets"] and first is None and \
            all(v is None for v in values.values()):
        return "-1.0"
    if all(v == first for v in values.values()):
        return show(first, door)
    return ", ".join(f"{show(v, door)} ({variant})" for variant, v in values.items())


def rule_sentence(o: dict, door: str) -> str:
    if o["type"] == "enum":
        return "One of " + ", ".join(f"`{c}`" for c in o["choices"]) + "."
    if o["type"] == "bool" or o["rule"] == "any":
        return ""
    if door == "tcl" and o["tcl_form"] == "decay_rate":
        return DECAY_RATE
    text = f"`{o['rule_text']}`"
    if o["type"] == "optional_double":
        none = o["none_doc"] or "unset"
        if door == "tcl":
            return (f"-1: {none}; otherwise {text}." if o["tcl_minus_one_unsets"]
                    else f"{text}; left out: {none}.")
        return f"{text}, or `None`: {none}." if door == "python" else \
            f"{text}, or `std::nullopt`: {none}."
    return f"{text}."


def meaning(o: dict, door: str, by_name: dict) -> str:
    parts = [render_doc(o["doc"], door, by_name)]
    rule = rule_sentence(o, door)
    return parts[0] + "." + (" " + rule if rule else "")


def table(door: str, rows: list[dict]) -> str:
    by_name = {o["name"]: o for o in rows}
    if door == "tcl":
        lines = ["| option | default | meaning |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in TCL_DOOR_FIRST]
        for o in rows:
            lines.append(f"| `-{o['tcl']}` *{TCL_TYPES[o['type']]}* | {default_cell(o, door)} | "
                         f"{meaning(o, door, by_name)} |")
        lines += [f"| {a} | {b} | {c} |" for a, b, c in TCL_DOOR_LAST]
    elif door == "python":
        lines = ["| argument | default | meaning |", "|---|---|---|"]
        packed = {"eps1": "eps[0]", "eps2": "eps[1]"}
        for o in rows:
            name = f"`{packed[o['name']]}` ({o['name']})" if o["name"] in packed \
                else f"`{o['name']}`"
            lines.append(f"| {name} | {default_cell(o, door)} | {meaning(o, door, by_name)} |")
    else:
        lines = ["| setter | default | meaning |", "|---|---|---|"]
        for o in rows:
            ctype = CPP_TYPES[o["type"]] or "enum"
            lines.append(f"| `.{o['name']}({ctype})` | {default_cell(o, door)} | "
                         f"{meaning(o, door, by_name)} |")
    return "\n".join(lines)


def rewrite(text: str, door: str, rows: list[dict]) -> str:
    begin, end = f"<!-- BEGIN adafactor-options:{door} -->", f"<!-- END adafactor-options:{door} -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"no {begin} ... {end} markers in the {door} page")
    return pattern.sub(lambda _: f"{begin}\n{table(door, rows)}\n{end}", text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a page is stale")
    args = parser.parse_args(argv)
    rows = options()
    stale = []
    for door, page in PAGES.items():
        old = page.read_text()
        new = rewrite(old, door, rows)
        if new != old:
            stale.append(str(page.relative_to(ROOT)))
            if not args.check:
                page.write_text(new)
    if args.check and stale:
        print("stale option tables (run python scripts/adafactor_option_docs.py): "
              + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
