"""Fuzzing the Tcl surface: random argument lists for every torch:: command.

The command list comes from `info commands ::torch::*` and each command's
options and positional order from its own usage message (the parser's
"wrong # args: should be POSITIONAL or NAMED"), so a new command is fuzzed
without touching this file. Python generates the whole run (fixed seed) and
one plain tclsh executes it, so a crash shows up as a signal or a non-zero
exit status of that process, never as a dead pytest.

What is checked for every call:
  - the process survives (no abort, no segfault, no Tcl panic);
  - a failing call is a Tcl error (return code 1) with a non-empty message
    and an -errorcode whose first word is TORCH or TCL;
  - a failing call leaves `torch::handles` exactly as it was (creates none,
    deletes none);
  - a successful call other than torch::delete removes no handle;
and at the end: after deleting every handle that successful calls created,
`torch::handles` is the starting set again, and the interpreter still trains
(a known-good Adafactor run whose loss must go down).

The process runs under an address-space limit (RLIMIT_AS), a safety net for
the shared machine: sizes are capped (at most a few thousand elements), and
the huge numbers the generator does use are ones that must be refused, or
allocations of terabytes that must fail cleanly.
"""
from __future__ import annotations

import base64
import random
import re
import resource
import subprocess
import time
from pathlib import Path

import pytest

from conftest import tclsh_env

SEED = 20240611
CALLS = 20_000           # generated; at least MIN_EXECUTED must run
MIN_EXECUTED = 10_000
TIMEOUT = 240            # seconds for the whole tclsh run (it takes ~20-40 s)
ADDRESS_SPACE = 6 << 30  # bytes of virtual memory the fuzzed tclsh may map

# ---------------------------------------------------------------- running

def _limit_address_space(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


def run_tcl_file(script: Path, *args: str, cwd: Path, timeout: float = TIMEOUT,
                 address_space: int = ADDRESS_SPACE) -> subprocess.CompletedProcess:
    return subprocess.run(["tclsh", str(script), *args], capture_output=True, text=True,
                          env=tclsh_env(), cwd=cwd, timeout=timeout,
                          preexec_fn=_limit_address_space(address_space))


def describe_exit(proc: subprocess.CompletedProcess) -> str:
    if proc.returncode < 0:
        return f"killed by signal {-proc.returncode}"
    return f"exit status {proc.returncode}"


# ---------------------------------------------------------------- discovery

DISCOVER = r"""
package require torch
foreach c [lsort [info commands ::torch::*]] {
    set c [string range $c 2 end]
    catch {$c {*}[lrepeat 40 x]} msg opts
    puts [list $c [dict get $opts -errorcode] $msg]
}
"""

USAGE = re.compile(r'should be "([^"]*)" or "([^"]*)"')
NAMED_ARG = re.compile(r'(\?)?-(\w+) (\w+)\??')


def camel_to_snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def parse_discovery(text: str) -> dict[str, dict | None]:
    """{command: spec or None} from the output of DISCOVER: a spec lists the
    options as (name, placeholder, required) and the number of positional
    arguments; None for a command that does not use the common parser
    (torch::delete)."""
    specs: dict[str, dict | None] = {}
    for line in text.splitlines():
        # three list words: name, errorcode, message
        name, rest = line.split(" ", 1)
        m = USAGE.search(rest)
        if not m:
            specs[name] = None
            continue
        positional, named = m.group(1), m.group(2)
        options = [(opt, ph, not optional)
                   for optional, opt, ph in NAMED_ARG.findall(named[len(name):])]
        specs[name] = {"options": options,
                       "npos": len(positional.split()) - 1}
    return specs


def discover(tmp_path: Path) -> dict[str, dict | None]:
    script = tmp_path / "discover.tcl"
    script.write_text(DISCOVER)
    proc = run_tcl_file(script, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return parse_discovery(proc.stdout)


# ---------------------------------------------------------------- generator

def lit(text: str) -> str:
    """Literal text as a `subst` template: no substitution survives, and
    anything outside printable ASCII is a backslash escape (so the data file
    is plain ASCII whatever the system encoding)."""
    out = []
    for ch in text:
        o = ord(ch)
        if ch in "\\[$":
            out.append("\\" + ch)
        elif o < 0x20 or o > 0x7E:
            out.append("\\U%08x" % o if o > 0xFFFF else "\\u%04x" % o)
        else:
            out.append(ch)
    return "".join(out)


DTYPES = ["float32", "float64", "float16", "bfloat16", "int8", "int16", "int32",
          "int64", "uint8", "bool"]
CHOICES = {"reduction": ["mean", "sum", "none"],
           "variant": ["transformers", "torch"],
           "rule": ["last_two", "largest_two"],
           "dtype": DTYPES}
HUGE_INTS = ["9223372036854775807", "-9223372036854775808", "4611686018427387904",
             "-4611686018427387904", "1099511627776", "100000000000"]
NOT_INTS = ["9223372036854775808", "-9223372036854775809", "18446744073709551616",
            "1.0", "1e2", "0x", "08", "", " ", "abc", "nan", "Inf", "1_0", "--1"]
NOT_DOUBLES = ["nan", "NaN", "-nan", "inf", "Inf", "-Inf", "1e309", "-1e309", "abc",
               "", " ", "1,5", "0.5.5", "1e", "0x1p3", "--1"]
WEIRD_STRINGS = ["", " ", "-", "--", "-shape", "-Shape", "-zzz", "{", "}", "{a", '"',
                 "\\", "[", "]", "$x", "a b c", "{{1 2} {3}}", "\u00e9\u00e8",
                 "\u65e5\u672c\u8a9e", "\U0001F600", "\x00", "a\x00b", "\t\n",
                 "x" * 5000, "1 2", "-1 -2", "true", "yes", "tensor0",
                 "tensor999999999", "module999999999", "optimizer999999999",
                 "TENSOR1", " tensor1", "tensor1 ", "tensor01", "::torch::zeros",
                 "[torch::zeros 3]"]


# A process group of several ranks waits for peers that never come here (up
# to its -timeout, which the fuzz may make huge): tests/test_tcl_distributed.py
# covers it. The other distributed commands are fuzzed (without a group they
# fail at once).
NOT_FUZZED = {"torch::distributed_init"}
# Without a group these can only fail (parsing and errors are fuzzed).
NEED_A_GROUP = {"torch::all_reduce", "torch::broadcast", "torch::all_gather", "torch::barrier",
                "torch::distributed_rank", "torch::distributed_world_size",
                "torch::distributed_data_parallel"}


class Gen:
    """Random argument lists (as `subst` templates: literal text escaped, and
    [S kind n] standing for the n-th live object of a kind, picked when the
    call runs)."""

    def __init__(self, seed: int, specs: dict[str, dict | None]):
        self.r = random.Random(seed)
        self.specs = specs
        self.commands = sorted(c for c in specs if c not in NOT_FUZZED)

    # -- small helpers
    def ph(self, kind: str) -> str:
        return f"[S {kind} {self.r.randrange(1000)}]"

    def pick(self, seq):
        return self.r.choice(seq)

    def chance(self, p: float) -> bool:
        return self.r.random() < p

    # -- bad and extreme values
    def bad(self) -> str:
        r = self.r.random()
        if r < 0.25:
            return self.ph(self.pick(["T", "M", "O", "D", "NT", "NM", "NO", "F"]))
        if r < 0.35:
            return f"{self.ph('T')} {self.ph('M')}"
        if r < 0.5:
            return lit(self.pick(NOT_INTS + NOT_DOUBLES))
        if r < 0.6:
            return lit(self.pick(HUGE_INTS))
        return lit(self.pick(WEIRD_STRINGS))

    # -- good values by placeholder
    def shape(self, allow_minus_one: bool = False) -> str:
        if self.chance(0.12):
            return lit(self.pick([
                "100000000000 100000000000", "1000000000000", "9223372036854775807",
                "4611686018427387904 4", "-1 2", "2 -3", "1.5", "2 x", "1e3", "{2 3}",
                "{", "1099511627776 0", "0 4611686018427387904",
                "4611686018427387904 0 3", "18446744073709551615",
                "-9223372036854775808", " 0x10 ", " ".join(["1"] * 70),
                "2147483648 2147483648 0", "3 -1" if allow_minus_one else "-1",
                "-1 -1", "0 -1"]))
        n = self.pick([0, 1, 1, 2, 2, 2, 3, 4])
        dims, prod = [], 1
        for _ in range(n):
            d = self.pick([0, 1, 1, 2, 3, 4, 5, 8, 16, 64])
            if prod * max(d, 1) > 4096:
                d = 1
            dims.append(d)
            prod *= max(d, 1)
        if allow_minus_one and dims and self.chance(0.3):
            dims[self.r.randrange(len(dims))] = -1
        return lit(" ".join(map(str, dims)))

    def number_text(self) -> str:
        r = self.r.random()
        if r < 0.4:
            return str(self.r.randint(-5, 9))
        if r < 0.8:
            return "%.6g" % self.r.uniform(-3, 3)
        return self.pick(["1e-3", "-0", "0x1f", "1e300", "-1e300", "5e-324", "0.5",
                          "1e-45", "65504", "70000", "255", "256", "-129"])

    def values(self) -> str:
        if self.chance(0.25):
            return lit(self.pick([
                "{1 2} {3}", "{1 2} x", "a", "", "{}", "{{}}", "{{} {}}", "1 {2}",
                "nan", "inf", "{nan inf -inf}", "1e400", "{1 2",
                "{" * 100 + "1" + "}" * 100, "{" * 2000 + "1" + "}" * 2000,
                " ".join(["7"] * 3000), "9223372036854775808", "1.5 2.5",
                "{{1 2} {3 4}} {{5 6} {7 8}}", "\u00e9"]))
        n = self.pick([0, 1, 2, 2, 3])
        dims = [self.r.randint(0 if self.chance(0.1) else 1, 4) for _ in range(n)]

        def build(level: int) -> str:
            if level == len(dims):
                return self.number_text()
            return "{" + " ".join(build(level + 1) for _ in range(dims[level])) + "}"

        text = build(0)
        if n and text.startswith("{") and self.chance(0.7):
            text = text[1:-1]  # the outer braces as Tcl would not write them
        return lit(text)

    def boolean(self) -> str:
        return lit(self.pick(["0", "1", "true", "false", "yes", "no", "on", "off",
                              "TRUE", "t", "f", "2", "-1", "0x0", "1.5"]))

    def double(self, name: str) -> str:
        if name == "p" or name.startswith("beta"):
            return lit(self.pick(["0", "0.1", "0.5", "0.9", "0.999", "1", "-1", "1.5",
                                  "%.4g" % self.r.random()]))
        if self.chance(0.1):
            return lit(self.pick(["1e300", "-1e300", "5e-324", "1.7976931348623157e308",
                                  "-0.0", "1e-30"]))
        return lit(self.pick(["0", "1", "0.5", "1e-3", "0.001", "0.9", "0.999", "1e-8",
                              "-0.5", "2", "10", "1e-30", "-1", "0.0", "0.01",
                              "%.6g" % self.r.uniform(-2, 2)]))

    def integer(self, name: str, placeholder: str) -> str:
        if self.chance(0.1):
            return lit(self.pick(HUGE_INTS))
        if name in ("inFeatures", "outFeatures"):
            return str(self.r.randint(0 if self.chance(0.05) else 1, 12))
        if name == "n":
            return str(self.pick([0, 1, 2, 5, 10, 100, self.r.randint(0, 3000)]))
        if name == "seed":
            return str(self.pick([0, 1, 42, 2**63 - 1, self.r.randrange(2**63)]))
        if name == "step":
            return str(self.pick([1, 1, 2, 3, 0, -1]))
        if name == "minDimSizeToFactor":
            return str(self.pick([0, 1, 2, 4, 128, 10**18]))
        return str(self.r.randint(-3, 5))

    def choice(self, placeholder: str) -> str:
        names = CHOICES[placeholder]
        r = self.r.random()
        if r < 0.7:
            return lit(self.pick(names))
        if r < 0.85:
            word = self.pick(names)
            return lit(word[: self.r.randint(1, len(word))])  # a prefix, maybe ambiguous
        return lit(self.pick(["", "FLOAT32", "float128", "complex64", "double",
                              "torch.float32", "float32 ", "Mean", "avg", "none none",
                              "\u00e9"]))

    def tensor(self) -> str:
        return self.ph(self.pick(["T", "T", "NT", "NT", "P", "I"]))

    def value(self, name: str, placeholder: str) -> str:
        """A value for -name: mostly good, sometimes extreme."""
        p = placeholder
        if p == "shape":
            return self.shape(allow_minus_one=True)
        if p == "values":
            return self.values()
        if p in CHOICES:
            return self.choice(p)
        if p == "bool":
            return self.boolean()
        if p == "value":
            return self.double(name)
        if p in ("int", "dim", "start", "end", "step", "n", "seed"):
            return self.integer(name, p)
        if p == "tensor":
            return self.tensor()
        if p == "tensorOrNumber":
            return self.tensor() if self.chance(0.55) else lit(self.number_text())
        if p == "indexTensor":
            return self.ph(self.pick(["I", "I", "I", "T", "NT"]))
        if p == "module":
            return self.ph(self.pick(["M", "M", "M", "NM"]))
        if p == "sequential":
            return self.ph(self.pick(["Q", "Q", "Q", "M", "NM"]))
        if p == "moduleList":
            return " ".join(self.ph(self.pick(["M", "M", "NM"]))
                            for _ in range(self.pick([0, 1, 2, 2, 3])))
        if p == "tensorsOrModule":
            return " ".join(self.ph(self.pick(["P", "P", "P", "M", "NT", "NM"]))
                            for _ in range(self.pick([1, 1, 2, 3])))
        if p == "optimizer":
            return self.ph(self.pick(["O", "O", "O", "NO"]))
        if p == "file":
            return self.ph("F")
        if p == "pattern":
            return lit(self.pick(["*", "tensor*", "module?", "*1*", "[tm]*", "[", "\\",
                                  "", "*[", "\u00e9*", "optimizer*", "*" * 200]))
        # A placeholder this generator does not know (a new command): a
        # mixture of everything.
        return self.pick([self.tensor(), self.ph("M"), self.ph("O"), lit(self.number_text()),
                          self.boolean(), self.shape(), self.bad()])

    # -- whole calls
    def spelling(self, name: str, spec: dict) -> str:
        r = self.r.random()
        if r < 0.7:
            return "-" + name
        if r < 0.85:
            return "-" + camel_to_snake(name)
        spellings = [n for n, _, _ in spec["options"]]
        spellings += [camel_to_snake(n) for n in spellings]
        k = 1
        while sum(s.startswith(name[:k]) for s in spellings) > 1 and k < len(name):
            k += 1
        return "-" + name[: self.r.randint(k, len(name))]

    def ambiguous_prefix(self, spec: dict) -> str | None:
        names = [n for n, _, _ in spec["options"]]
        found = []
        for n in names:
            for k in range(1, len(n)):
                p = n[:k]
                if sum(m.startswith(p) for m in names) > 1:
                    found.append(p)
        return "-" + self.pick(found) if found else None

    def named(self, spec: dict, mutate: bool) -> list[str]:
        opts = spec["options"]
        chosen = [o for o in opts if o[2] or self.chance(0.35)]
        self.r.shuffle(chosen)
        words: list[str] = []
        for name, ph, _ in chosen:
            words += [lit(self.spelling(name, spec)), self.value(name, ph)]
        if not mutate:
            return words
        for _ in range(self.pick([1, 1, 1, 2, 3])):
            kind = self.pick(["unknown", "ambiguous", "missing_value", "drop", "bad",
                              "bad", "bad", "duplicate", "case"])
            if kind == "unknown":
                at = self.r.randrange(0, len(words) + 1, 2) if words else 0
                words[at:at] = [lit(self.pick(["-zzz", "-_", "-a1", "-shapes", "-x y",
                                               "-\u00e9", "-" + "q" * 300])),
                                self.value("", "shape")]
            elif kind == "ambiguous":
                prefix = self.ambiguous_prefix(spec)
                if prefix:
                    words += [lit(prefix), lit("1")]
            elif kind == "missing_value" and words:
                words.pop()
            elif kind == "drop" and words:
                at = self.r.randrange(0, len(words), 2)
                del words[at:at + 2]
            elif kind == "bad" and len(words) >= 2:
                words[self.r.randrange(1, len(words), 2)] = self.bad()
            elif kind == "duplicate" and opts:
                name, ph, _ = self.pick(opts)
                words += [lit("-" + name), self.value(name, ph)]
            elif kind == "case" and words:
                at = self.r.randrange(0, len(words), 2)
                words[at] = words[at].upper()
        return words

    def positional(self, spec: dict, mutate: bool) -> list[str]:
        opts = spec["options"][: spec["npos"]]
        required = sum(1 for o in opts if o[2])
        if mutate:
            count = self.r.randint(0, spec["npos"] + 2)
        else:
            count = self.r.randint(required, len(opts))
        words = []
        for k in range(count):
            if k < len(opts):
                name, ph, _ = opts[k]
                words.append(self.bad() if mutate and self.chance(0.3)
                             else self.value(name, ph))
            else:
                words.append(self.bad())
        return words

    def delete_call(self) -> list[str]:
        r = self.r.random()
        if r < 0.45:  # handles successful calls made: succeeds
            return [" ".join(self.ph(self.pick(["CT", "CM", "CO"])) for _ in
                             range(self.pick([1, 1, 2, 3])))
                    for _ in range(self.pick([1, 1, 2]))]
        if r < 0.6:  # deleted, or never made
            return [self.ph("D")] if self.chance(0.7) else [lit("tensor999999999")]
        if r < 0.75:  # live handles and then a bad one: must delete nothing
            words = [self.ph(self.pick(["T", "M", "O", "P"])) for _ in
                     range(self.pick([1, 2, 3]))]
            bad = self.pick([self.ph("D"), lit("nosuch"), lit("{"), lit(""), lit("{a b} c")])
            if bad in (lit(""),):
                bad = lit("nosuch")
            words.insert(self.r.randrange(len(words) + 1), bad)
            return words
        if r < 0.8:
            return []
        if r < 0.9:
            return [lit(self.pick(["", "{", "{}", "{{}}", "\u00e9", " ", "\x00"]))]
        return [lit("{") + self.ph("T"), self.ph("T") + lit("}")]

    def generic_call(self) -> list[str]:
        return [self.pick([self.bad(), self.tensor(), self.ph("M"), self.ph("O"),
                           lit(self.number_text())]) for _ in range(self.r.randint(0, 5))]

    def call(self) -> tuple[str, list[str]]:
        cmd = self.pick(self.commands)
        spec = self.specs[cmd]
        if spec is None:
            words = self.delete_call() if cmd == "torch::delete" else self.generic_call()
            return cmd, words
        r = self.r.random()
        if r < 0.35:
            words = self.named(spec, mutate=False)
        elif r < 0.6:
            words = self.positional(spec, mutate=False)
        elif r < 0.85:
            words = self.named(spec, mutate=True)
        elif r < 0.95:
            words = self.positional(spec, mutate=True)
        else:
            words = self.generic_call()
        return cmd, words


def write_calls(path: Path, gen: Gen, count: int) -> list[tuple[str, list[str]]]:
    calls = [gen.call() for _ in range(count)]
    with path.open("w", encoding="ascii") as f:
        for cmd, words in calls:
            f.write("\t".join([cmd] + [base64.b64encode(w.encode("ascii")).decode()
                                        for w in words]) + "\n")
    return calls


# ---------------------------------------------------------------- the driver

DRIVER = r"""
# argv: calls-file files-dir
lassign $argv calls_file files
fconfigure stdout -buffering line
package require torch

# ---- objects the calls use: tensors, modules, optimizers, dead handles, files
torch::manual_seed 1234
set T {}
lappend T [torch::randn {2 3} float32 1]               ;# 0 parameter
lappend T [torch::randn {3} float32 1]                 ;# 1 parameter
lappend T [torch::zeros {4 4} float64]                 ;# 2
lappend T [torch::tensor_create {0 1 2} {} int64]      ;# 3 index
lappend T [torch::tensor_create {1 0 1} {} bool]       ;# 4
lappend T [torch::full {} 2.5]                         ;# 5 scalar
lappend T [torch::zeros {0 3} float32 1]               ;# 6 empty parameter
lappend T [torch::randn {2 3} float16 1]               ;# 7 parameter
lappend T [torch::randn {2 3} bfloat16 1]              ;# 8 parameter
lappend T [torch::mul [lindex $T 0] 2]                 ;# 9 not a leaf
lappend T [torch::tensor_create {1 2 250} {} uint8]    ;# 10
lappend T [torch::randn {5 3}]                         ;# 11 input of M0
lappend T [torch::tensor_create {0 3 1 2 3} {} int64]  ;# 12 class targets
lappend T [torch::zeros {1099511627776 0}]             ;# 13 no elements, huge dimension
lappend T [torch::tensor_slice [lindex $T 2] 0 1 3]    ;# 14 view
lappend T [torch::div [torch::zeros {3}] 0]            ;# 15 NaN
lappend T [torch::tensor_create {-1 5 100} {} int32]   ;# 16 bad indices
lappend T [torch::randn {4 2} float32 1]               ;# 17 parameter
lappend T [torch::tensor_create {{1 2 3 4}} {} float64] ;# 18
lappend T [torch::randn {1 1 1 1 1 1 1 1} float64 1]   ;# 19 parameter, 8 dims
lappend T [torch::randn {3 4}] [torch::randn {4}] [torch::randn {4 4}] ;# 20-22 for matmul
lappend T [torch::tensor_create {0 2 1 2 0} {} int64]  ;# 23 targets for {5 3} and {5 4}
set M {}
lappend M [torch::linear 3 4]                          ;# 0
lappend M [torch::relu]                                ;# 1
lappend M [torch::sequential [list [lindex $M 0] [lindex $M 1]]] ;# 2 sequential
lappend M [torch::dropout 0.5]                         ;# 3
lappend M [torch::linear 3 4 0]                        ;# 4
lappend M [torch::sequential]                          ;# 5 empty sequential
lappend M [torch::tanh]                                ;# 6
lappend M [torch::gelu]                                ;# 7
lappend M [torch::linear 4 2]                          ;# 8
lappend M [torch::sigmoid]                             ;# 9
lappend T [torch::cross_entropy_loss [torch::forward [lindex $M 0] [lindex $T 11]] [lindex $T 12]] ;# 24 loss
set P [list {*}[lmap k {0 1 6 7 8 17 19} {lindex $T $k}] {*}[torch::parameters [lindex $M 0]]]
lappend T {*}[torch::parameters [lindex $M 8]]
set I [lmap k {3 12 23 16 4 10} {lindex $T $k}]
set Q [list [lindex $M 2] [lindex $M 5]]
set O {}
lappend O [torch::optimizer_adafactor -parameters [list [lindex $T 0] [lindex $T 1]]]
lappend O [torch::optimizer_adam -parameters [lindex $M 0]]
lappend O [torch::optimizer_sgd -parameters [lindex $T 17] -lr 0.1 -momentum 0.9]
lappend O [torch::optimizer_adamw -parameters [lindex $M 8] -amsgrad 1]
lappend O [torch::optimizer_adafactor -parameters [lmap k {6 7 8} {lindex $T $k}] -beta1 0.9 -variant torch]
lappend O [torch::optimizerAdafactor [lindex $M 4] 0.01]
lappend O [torch::optimizer_adafactor -parameters [list [lindex $T 17] [lindex $T 19]] -relativeStep 0 -lr 0.01 \
    -fp32State 1 -stochasticRounding 1 -skipNonFinite 1 -factoredDims largest_two]
torch::tensor_backward [torch::sum [torch::mul [lindex $T 0] [lindex $T 0]]]
foreach o $O { torch::optimizer_step $o }
set dead {}
foreach h [list [torch::zeros 2] [torch::relu] [torch::optimizer_sgd [lindex $T 1]]] {
    torch::delete $h
    lappend dead $h
}
file mkdir $files
set F {}
lappend F [file join $files module.pt] [file join $files optimizer.pt]
torch::module_save [lindex $M 0] [lindex $F 0]
torch::optimizer_save [lindex $O 0] [lindex $F 1]
foreach {name content} {garbage.pt "not a checkpoint at all" empty.pt ""} {
    set f [open [file join $files $name] w]; puts -nonewline $f $content; close $f
    lappend F [file join $files $name]
}
set f [open [lindex $F 1] rb]; set bytes [read $f]; close $f
set f [open [file join $files truncated.pt] wb]
puts -nonewline $f [string range $bytes 0 [expr {[string length $bytes] / 2}]]; close $f
lappend F [file join $files truncated.pt] $files [file join $files nodir x.pt] \
    relative.pt "" [file join $files \u00e9t\u00e9.pt] [file join $files [string repeat n 300]]
for {set k 0} {$k < 8} {incr k} { lappend F [file join $files new$k.pt] }

set base [torch::handles]
set created {}

proc of_kind {list kind} {
    lmap h $list {expr {[string match $kind* $h] ? $h : [continue]}}
}
# The object a placeholder [S kind n] stands for.
proc S {kind n} {
    global T M O P I Q F dead created
    switch -- $kind {
        T { set l $T } M { set l $M } O { set l $O } P { set l $P } I { set l $I }
        Q { set l $Q } F { set l $F } D { set l $dead }
        NT { set l [of_kind $created tensor]; if {![llength $l]} { set l $T } }
        NM { set l [of_kind $created module]; if {![llength $l]} { set l $M } }
        NO { set l [of_kind $created optimizer]; if {![llength $l]} { set l $O } }
        CT - CM - CO {
            # made by a call, never a base object (for torch::delete)
            set l [of_kind $created [dict get {CT tensor CM module CO optimizer} $kind]]
            if {![llength $l]} { return nosuch }
        }
    }
    lindex $l [expr {$n % [llength $l]}]
}

proc show {cmd words} {
    set text [list $cmd {*}$words]
    if {[string length $text] > 300} { set text "[string range $text 0 300]..." }
    return $text
}
proc violation {i what cmd words} {
    incr ::stats(violations)
    puts "VIOLATION $i: $what | [show $cmd $words]"
}
array set stats {calls 0 ok 0 errors 0 violations 0}
set codes {}
set slowest {0 {}}
set in [open $calls_file]
set i 0
while {[gets $in line] >= 0} {
    incr i
    set parts [split $line \t]
    set cmd [lindex $parts 0]
    set words [lmap b [lrange $parts 1 end] {subst [binary decode base64 $b]}]
    puts "@ $i"
    set before [torch::handles]
    set t0 [clock microseconds]
    set rc [catch {$cmd {*}$words} result opts]
    set dt [expr {[clock microseconds] - $t0}]
    if {$dt > [lindex $slowest 0]} { set slowest [list $dt [show $cmd $words]] }
    set after [torch::handles]
    incr stats(calls)
    incr ncalls($cmd)
    if {![info exists nok($cmd)]} { set nok($cmd) 0 }
    if {$rc == 1} {
        incr stats(errors)
        set code [dict get $opts -errorcode]
        if {$result eq ""} { violation $i "empty error message" $cmd $words }
        if {[catch {lindex $code 0} first] || $first ni {TORCH TCL}} {
            violation $i "-errorcode \"$code\" (message: $result)" $cmd $words
        } else {
            set key [lrange $code 0 1]
            if {![dict exists $codes $key]} {
                puts "SAMPLE [list $key] [string range $result 0 160] | [show $cmd $words]"
            }
            dict incr codes $key
        }
        if {$after ne $before} {
            violation $i "a failing call changed the handles: before {$before} after {$after}" $cmd $words
        }
    } elseif {$rc == 0} {
        incr stats(ok)
        incr nok($cmd)
        if {$after ne $before} {
            foreach h $before { set was($h) 1 }
            set added {}
            foreach h $after {
                if {[info exists was($h)]} { unset was($h) } else { lappend added $h }
            }
            set removed [array names was]
            array unset was
            if {[llength $removed] && $cmd ne "torch::delete"} {
                violation $i "a successful call removed handles {$removed}" $cmd $words
            }
            foreach h $removed {
                if {$h in $base} { violation $i "base handle $h deleted" $cmd $words }
            }
            set created [lmap h $created {expr {$h in $removed ? [continue] : $h}}]
            lappend created {*}$added
            lappend dead {*}$removed
            # Keep the live set small: delete the oldest handles calls made.
            if {[llength $created] > 150} {
                set old [lrange $created 0 74]
                torch::delete {*}$old
                lappend dead {*}$old
                set created [lrange $created 75 end]
            }
            if {[llength $dead] > 100} { set dead [lrange $dead end-49 end] }
        }
    } else {
        violation $i "return code $rc" $cmd $words
    }
}
close $in
puts "@ end"

# ---- handles: what successful calls created is all that is extra
set now [torch::handles]
set extra [lmap h $now {expr {$h in $base ? [continue] : $h}}]
set missing [lmap h $base {expr {$h in $now ? [continue] : $h}}]
if {[llength $missing]} { violation end "base handles gone: $missing" - {} }
if {[lsort $extra] ne [lsort $created]} {
    violation end "handles not accounted for: live extra {$extra}, recorded {$created}" - {}
}
if {[llength $extra]} { torch::delete {*}$extra }
set final_handles [torch::handles]
if {$final_handles ne $base} {
    violation end "after deleting the created handles: {$final_handles} is not {$base}" - {}
}

# ---- the interpreter still works: a known-good training run
if {[expr {6 * 7}] != 42} { violation end "expr is broken" - {} }
torch::manual_seed 7
set net [torch::sequential [list [torch::linear 4 8] [torch::tanh] [torch::linear 8 1]]]
set x [torch::randn {32 4}]
set y [torch::sum [torch::tensor_slice $x 1 0 2] 1 1]
set opt [torch::optimizer_adafactor -parameters $net -relativeStep 0 -lr 0.02]
set losses {}
for {set k 0} {$k < 60} {incr k} {
    torch::optimizer_zero_grad $opt
    set loss [torch::mse_loss [torch::forward $net $x] $y]
    torch::tensor_backward $loss
    torch::optimizer_step $opt
    lappend losses [torch::tensor_item $loss]
}
puts "FINAL [lindex $losses 0] [lindex $losses end]"
foreach k [array names stats] { puts "STAT $k $stats($k)" }
dict for {c n} $codes { puts "CODE [list $c] $n" }
foreach c [lsort [array names ncalls]] { puts "CMD $c $ncalls($c) $nok($c)" }
puts "SLOWEST [expr {[lindex $slowest 0] / 1000}] ms [lindex $slowest 1]"
puts DONE
"""


def test_fuzz_every_command(tmp_path, capsys):
    specs = discover(tmp_path)
    assert "torch::zeros" in specs and "torch::optimizer_adafactor" in specs
    assert specs["torch::delete"] is None, "torch::delete takes any words"
    parsed = [c for c, s in specs.items() if s is not None]
    assert len(parsed) >= 50, sorted(specs)

    gen = Gen(SEED, specs)
    calls_file = tmp_path / "calls.txt"
    calls = write_calls(calls_file, gen, CALLS)
    driver = tmp_path / "driver.tcl"
    driver.write_text(DRIVER)
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    t0 = time.monotonic()
    proc = run_tcl_file(driver, str(calls_file), str(tmp_path / "files"), cwd=cwd)
    elapsed = time.monotonic() - t0
    out = proc.stdout.splitlines()

    if proc.returncode != 0 or "DONE" not in out:
        marks = [line for line in out if line.startswith("@ ")]
        last = marks[-1][2:] if marks else "before the first call"
        where = ""
        if last.isdigit():
            cmd, words = calls[int(last) - 1]
            where = f" at call {last}: {cmd} {words!r}"
        pytest.fail(f"tclsh died ({describe_exit(proc)}){where}\n"
                    f"stderr: {proc.stderr[-3000:]}")

    stats = {k: int(v) for k, v in
             (line.split()[1:3] for line in out if line.startswith("STAT "))}
    codes = [line[5:] for line in out if line.startswith("CODE ")]
    samples = [line[7:] for line in out if line.startswith("SAMPLE ")]
    percmd = {line.split()[1]: (int(line.split()[2]), int(line.split()[3]))
              for line in out if line.startswith("CMD ")}
    violations = [line for line in out if line.startswith("VIOLATION")]
    final = next(line for line in out if line.startswith("FINAL")).split()
    slowest = next(line for line in out if line.startswith("SLOWEST"))

    with capsys.disabled():
        print(f"\n[fuzz] seed {SEED}: {stats['calls']} calls fuzzed over {len(specs)} commands "
              f"in {elapsed:.1f} s: {stats['errors']} errors, {stats['ok']} successes, "
              f"crashes 0, violations {stats['violations']}")
        print(f"[fuzz] error codes: {', '.join(codes)}")
        for sample in samples:
            print(f"[fuzz]   first {sample}")
        print(f"[fuzz] final training run: loss {final[1]} -> {final[2]}; {slowest}")
        print("[fuzz] per command (calls/successes): " +
              ", ".join(f"{c.split('::')[1]} {n}/{k}" for c, (n, k) in sorted(percmd.items())))
        for v in violations[:30]:
            print("[fuzz]", v)

    assert not violations, "\n".join(violations[:30])
    assert stats["violations"] == 0
    assert stats["calls"] >= MIN_EXECUTED
    assert stats["calls"] == stats["errors"] + stats["ok"]
    assert set(percmd) == set(specs) - NOT_FUZZED, "a command was never fuzzed"
    assert all(n >= 50 for n, _ in percmd.values()), percmd
    # The generator reaches the command bodies, not only the parser: every
    # command succeeds at least once.
    assert all(k >= 1 for c, (_, k) in percmd.items() if c not in NEED_A_GROUP), \
        {c: v for c, v in percmd.items() if v[1] == 0}
    assert stats["errors"] >= 0.2 * stats["calls"] and stats["ok"] >= 0.2 * stats["calls"]
    assert float(final[2]) < 0.5 * float(final[1]), final


# ---------------------------------------------------------------- edge cases once fatal

HUGE_EMPTY = r"""
package require torch
set t [torch::zeros {1099511627776 0}]
set rc [catch {torch::tensor_to_list $t} result opts]
puts "rc $rc [string range $result 0 200] [expr {$rc ? [dict get $opts -errorcode] : ""}]"
"""


def test_to_list_of_empty_tensor_with_huge_dimension(tmp_path):
    script = tmp_path / "huge_empty.tcl"
    script.write_text(HUGE_EMPTY)
    try:
        proc = run_tcl_file(script, cwd=tmp_path, timeout=60, address_space=2 << 30)
    except subprocess.TimeoutExpired:
        pytest.fail("torch::tensor_to_list did not return within 60 s")
    assert proc.returncode == 0, f"{describe_exit(proc)}: {proc.stderr[-500:]}"
    assert proc.stdout.startswith("rc 1 ") and "TORCH" in proc.stdout, proc.stdout


DEEP_VALUES = r"""
package require torch
set d 60000
set values [string repeat "\{" $d]1[string repeat "\}" $d]
set rc [catch {torch::tensor_create $values} result opts]
puts "rc $rc [string range $result 0 200] [expr {$rc ? [dict get $opts -errorcode] : ""}]"
"""


def test_tensor_create_deeply_nested_values(tmp_path):
    script = tmp_path / "deep.tcl"
    script.write_text(DEEP_VALUES)
    proc = run_tcl_file(script, cwd=tmp_path, timeout=120, address_space=2 << 30)
    assert proc.returncode == 0, f"{describe_exit(proc)}: {proc.stderr[-500:]}"
    assert proc.stdout.startswith("rc "), proc.stdout


# ---------------------------------------------------------------- command line

def main(argv: list[str]) -> int:
    """For scripts/sanitize.sh, which runs the fuzz against another build:
        write-scripts DIR                        DIR/discover.tcl, DIR/driver.tcl
        write-calls COMMANDS CALLS N [SEED]      COMMANDS: discover.tcl's output
    then: tclsh DIR/driver.tcl CALLS FILES-DIR (in a scratch directory)."""
    if len(argv) == 2 and argv[0] == "write-scripts":
        out = Path(argv[1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "discover.tcl").write_text(DISCOVER)
        (out / "driver.tcl").write_text(DRIVER)
        return 0
    if len(argv) in (4, 5) and argv[0] == "write-calls":
        specs = parse_discovery(Path(argv[1]).read_text())
        seed = int(argv[4]) if len(argv) == 5 else SEED
        write_calls(Path(argv[2]), Gen(seed, specs), int(argv[3]))
        return 0
    print(main.__doc__)
    return 2


if __name__ == "__main__":
    import sys
    raise SystemExit(main(sys.argv[1:]))
