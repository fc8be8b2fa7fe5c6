"""Tables, targets, plots and docs/performance.md from the results dict of
benchmarks/run.py."""
from __future__ import annotations

import statistics
from pathlib import Path

from . import training_report
from .sets import human

SHORT = {
    "cpp": "C++ door", "py_C": "tcltorch._C", "py": "tcltorch.Adafactor", "tcl": "Tcl door",
    "torch_loop": "torch for-loop", "torch_foreach": "torch foreach",
    "transformers": "transformers", "timm": "timm", "adamw_fused": "AdamW fused",
    "floor": "floor",
}
# Our doors the speed targets are checked for (each when it exists): every door.
SPEED_DOORS = ["cpp", "py_C", "py", "tcl"]
MEMORY_DOORS = ["cpp", "py_C", "py", "tcl"]


# ------------------------------------------------------------------ formatting
def fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.{1 if s >= 0.1 else 2}f} ms"
    return f"{s * 1e6:.{1 if s >= 1e-4 else 2}f} us"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.{1 if abs(n) >= 10 * size else 2}f} {unit}"
    return f"{n:.0f} B"


def set_name(results, key) -> str:
    s = results["sets"][key]
    return f"{key} {human(s['numel'])}"


class Lookup:
    def __init__(self, results):
        self.results = results
        self.t = {(r["set"], r["threads"], r["impl"]): r for r in results["times"]}
        self.impls = {i["key"]: i for i in results["impls"]}
        self.peak = {(r["set"], r["impl"]): r for r in results["peak"]}

    def time(self, set_key, threads, impl):
        r = self.t.get((set_key, threads, impl))
        return r["median_s"] if r else None

    def paired_difference(self, set_key, threads, a, b):
        """Median and spread (IQR/2) of the per-round differences a - b: the
        rows of a set are sampled round-robin, so sample i of each comes from
        the same round."""
        ra, rb = self.t.get((set_key, threads, a)), self.t.get((set_key, threads, b))
        if not ra or not rb:
            return None, None
        diffs = [x - y for x, y in zip(ra["samples"], rb["samples"])]
        if len(diffs) < 4:
            return statistics.median(diffs), None
        q = statistics.quantiles(diffs, n=4)
        return statistics.median(diffs), (q[2] - q[0]) / 2

    def others(self, set_key, threads):
        """The share of CPU time other processes took while the set was timed."""
        return self.results.get("other_cpu_share", {}).get(f"{set_key}/{threads}")

    def label(self, impl):
        return self.impls[impl]["label"]

    def available(self, impl):
        return impl in self.impls and self.impls[impl]["available"]


# ------------------------------------------------------------------ targets
def targets(results) -> list[dict]:
    """The issue's targets, checked at every thread count (the verdict is the
    first, the machine's default)."""
    L = Lookup(results)
    out = []

    def add(tid, text, threads, door, value, op, limit, unit, extra=""):
        met = None if value is None else (value >= limit if op == ">=" else value <= limit)
        out.append({"id": tid, "text": text, "threads": threads, "door": door,
                    "value": value, "op": op, "limit": limit, "unit": unit, "met": met,
                    "note": extra})

    def ratio(a, b):
        return None if a is None or b is None or b == 0 else a / b

    for threads in results["threads"]:
        for door in SPEED_DOORS:
            if not L.available(door):
                continue
            d = SHORT[door]
            add("vs_torch", f"transformer: torch.optim.Adafactor (for-loop) / ours ({d})",
                threads, door, ratio(L.time("transformer", threads, "torch_loop"),
                                     L.time("transformer", threads, door)), ">=", 5, "x")
            add("vs_adamw", f"transformer: ours ({d}) / AdamW(fused=True)", threads, door,
                ratio(L.time("transformer", threads, door),
                      L.time("transformer", threads, "adamw_fused")), "<=", 1.0, "x")
            add("vs_floor", f"transformer: ours ({d}) / bandwidth floor", threads, door,
                ratio(L.time("transformer", threads, door),
                      L.time("transformer", threads, "floor")), "<=", 1.3, "x")
            add("conv_vs_floor", f"conv: ours ({d}) / bandwidth floor", threads, door,
                ratio(L.time("conv", threads, door),
                      L.time("conv", threads, "floor")), "<=", 2.0, "x")
            add("small_vs_torch", f"small: torch.optim.Adafactor (for-loop) / ours ({d})",
                threads, door, ratio(L.time("small", threads, "torch_loop"),
                                     L.time("small", threads, door)), ">=", 10, "x")
        for key in ("tiny", "small"):
            diff, spread = L.paired_difference(key, threads, "tcl", "cpp")
            value = None if diff is None else diff * 1e6
            note, unresolved = "median of per-round differences", False
            if spread is not None:
                # The difference is only resolved beyond the spread of the
                # per-round differences.
                note += f", spread (IQR/2) {spread * 1e6:.2f} us"
                unresolved = value is not None and 5 < value <= 5 + 2 * spread * 1e6
            add("tcl_overhead", f"{key}: Tcl door - C++ door, per call", threads, "tcl",
                value, "<=", 5, "us", note)
            if unresolved:
                out[-1]["met"] = "unresolved"
        # The Python door (tcltorch.Adafactor, a torch.optim.Optimizer) at the
        # C++ door: a ratio where the step's work dominates, the time a call
        # adds on the tiny set (a few us of Python, against a 4 us step).
        if L.available("py"):
            for key in (k for k in results["main_sets"] if k != "tiny"):
                add("py_vs_cpp", f"{key}: tcltorch.Adafactor / C++ door", threads, "py",
                    ratio(L.time(key, threads, "py"), L.time(key, threads, "cpp")),
                    "<=", 1.15, "x")
            diff, spread = L.paired_difference("tiny", threads, "py", "cpp")
            add("py_overhead", "tiny: tcltorch.Adafactor - C++ door, per step", threads, "py",
                None if diff is None else diff * 1e6, "<=", 10, "us",
                "median of per-round differences" + (
                    "" if spread is None else f", spread (IQR/2) {spread * 1e6:.2f} us"))
    for door in MEMORY_DOORS:
        r = L.peak.get(("transformer", door))
        if r is None:
            continue
        add("peak", f"transformer: peak added memory / parameter bytes ({SHORT[door]})", None,
            door, 100 * r["added"] / r["param_bytes"], "<=", 1.0, "%",
            f"{fmt_bytes(r['added'])} of {fmt_bytes(r['param_bytes'])}")
    out += training_report.targets(results)
    return out


def fmt_target_value(t) -> str:
    v = t["value"]
    if v is None:
        return "n/a"
    if t["unit"] == "x":
        return f"{v:.2f}x"
    if t["unit"] == "us":
        return f"{v:+.2f} us"
    return f"{v:.2f} %"


def fmt_limit(t) -> str:
    unit = {"x": "x", "us": " us", "%": " %"}[t["unit"]]
    return f"{t['op']} {t['limit']:g}{unit}"


def verdict(t) -> str:
    return {True: "met", False: "NOT MET", None: "n/a",
            "unresolved": "within noise"}[t["met"]]


# ------------------------------------------------------------------ text tables
def _grid(rows, align=None) -> list[str]:
    widths = [max(len(str(r[c])) for r in rows) for c in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        cells = []
        for c, v in enumerate(r):
            left = c == 0 if align is None else align[c] == "l"
            cells.append(str(v).ljust(widths[c]) if left else str(v).rjust(widths[c]))
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def main_table(results, threads) -> list[list[str]]:
    L = Lookup(results)
    sets = results["main_sets"]
    rows = [["implementation"] + [set_name(results, k) for k in sets]]
    for impl in results["impls"]:
        key = impl["key"]
        if not impl["available"]:
            rows.append([f"{impl['label']}: not available ({impl['reason']})"] + [""] * len(sets))
            continue
        cells = [impl["label"]]
        for k in sets:
            t, ref = L.time(k, threads, key), L.time(k, threads, "cpp")
            ratio = f" ({t / ref:5.2f}x)" if t is not None and ref else ""
            cells.append(fmt_time(t) + ratio if t is not None else "-")
        rows.append(cells)
    rows.append(["(CPU time other processes took meanwhile)"]
                + [fmt_share(L.others(k, threads)) for k in sets])
    return rows


def fmt_share(x) -> str:
    return "?" if x is None else f"{100 * x:.0f} %"


def sweep_table(results, threads) -> list[list[str]]:
    L = Lookup(results)
    keys = [i["key"] for i in results["impls"] if i["available"] and i["key"] != "tcl"
            and any(L.time(s, threads, i["key"]) for s in results["sweep"])]
    rows = [["params"] + [SHORT[k] for k in keys] + ["C++/floor", "floor GB/s", "others' CPU"]]
    for s in results["sweep"]:
        cells = [human(results["sets"][s]["numel"])]
        cells += [fmt_time(L.time(s, threads, k)) for k in keys]
        c, f = L.time(s, threads, "cpp"), L.time(s, threads, "floor")
        cells.append(f"{c / f:.2f}x" if c and f else "-")
        cells.append(f"{20 * results['sets'][s]['numel'] / f / 1e9:.1f}" if f else "-")
        cells.append(fmt_share(L.others(s, threads)))
        rows.append(cells)
    return rows


def memory_table(results, set_key) -> list[list[str]]:
    L = Lookup(results)
    adamw = L.peak.get((set_key, "adamw_fused"), {}).get("state_bytes")
    rows = [["implementation", "state", "state / AdamW's", "peak added by a step",
             "added / param bytes"]]
    for impl in results["impls"]:
        r = L.peak.get((set_key, impl["key"]))
        if r is None:
            continue
        sb = r["state_bytes"]
        rows.append([impl["label"], fmt_bytes(sb),
                     f"{100 * sb / adamw:.2f} %" if sb is not None and adamw else "-",
                     fmt_bytes(r["added"]), f"{100 * r['added'] / r['param_bytes']:.2f} %"])
    return rows


def targets_table(results, threads=None) -> list[list[str]]:
    rows = [["target", "threads", "measured", "limit", "verdict", "note"]]
    for t in results["targets"]:
        if threads is not None and t["threads"] not in (threads, None):
            continue
        rows.append([t["text"], "-" if t["threads"] is None else str(t["threads"]),
                     fmt_target_value(t), fmt_limit(t), verdict(t), t["note"]])
    return rows


def tables(results) -> str:
    m = results["meta"]
    out = [f"Adafactor step benchmark: {m.get('cpu')}, {m['cores']} cores, torch {m['torch']}, "
           f"tcltorch {m['tcltorch']} ({m['tcltorch_cpu_capability']} loops)"
           + ("  [SMOKE RUN: tiny sizes, timings meaningless]" if m["smoke"] else "")]
    for threads in results["threads"]:
        out += ["", f"Step time, {threads} thread(s): median, (ratio to the C++ door)"]
        out += _grid(main_table(results, threads))
    for threads in results["threads"]:
        out += ["", f"Size sweep, {threads} thread(s): median step time"]
        out += _grid(sweep_table(results, threads), align="l" + "r" * 20)
    for set_key in results["peak_sets"]:
        out += ["", f"Memory, {set_name(results, set_key)} set, fresh process per "
                "implementation"]
        out += _grid(memory_table(results, set_key))
    if results.get("distributed"):
        from .distributed import table as distributed_table
        out += ["", "Sharded Adafactor (-shardState 1), transformer set, 1 thread per rank"]
        out += _grid(distributed_table(results))
    out += training_report.text(results)
    out += ["", "Targets"]
    out += _grid(targets_table(results))
    out += ["", run_summary(results)]
    busy = disturbed(results)
    if busy:
        out.append("WARNING: other processes took over 10% of the CPU while timing "
                   + ", ".join(busy) + ": those figures are unreliable.")
    return "\n".join(out)


def run_summary(results) -> str:
    m = results["meta"]
    return (f"Run took {m['elapsed_s']:.0f} s (of which {m.get('waited_s', 0):.0f} s waiting "
            f"for a quiet machine); other processes took {fmt_share(m.get('other_cpu_share'))} "
            "of the machine's CPU time meanwhile.")


def disturbed(results) -> list[str]:
    return [f"{k.replace('/', ' at ')} thread(s) ({100 * v:.0f} %)"
            for k, v in results.get("other_cpu_share", {}).items() if v > 0.1]


# ------------------------------------------------------------------ plots
def plots(results, directory: Path) -> dict[str, str]:
    """PNG files by name; empty without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 - plots are optional
        return {}
    directory.mkdir(parents=True, exist_ok=True)
    L = Lookup(results)
    threads = results["threads"][0]
    files = {}
    colors = {"cpp": "#1f5fbf", "py_C": "#3c8ee6", "py": "#7ab3f0", "tcl": "#8e5cd9",
              "torch_loop": "#d9534f", "torch_foreach": "#f0883e", "transformers": "#c9a227",
              "timm": "#888888", "adamw_fused": "#2e9e5b", "floor": "#222222"}

    # Step time per implementation, one panel per set.
    sets = [k for k in results["main_sets"] if k != "tiny"] + ["tiny"]
    fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 4.2), sharey=True)
    keys = [i["key"] for i in results["impls"] if i["available"]]
    for ax, s in zip(axes, sets):
        vals = [L.time(s, threads, k) for k in keys]
        y = range(len(keys))
        ax.barh(list(y), [v * 1e3 if v else 0 for v in vals],
                color=[colors.get(k, "#999") for k in keys])
        ax.set_xscale("log")
        ax.set_title(set_name(results, s), fontsize=10)
        ax.set_xlabel("ms per step (log)")
        for yy, v in zip(y, vals):
            if v:
                ax.text(v * 1e3, yy, " " + fmt_time(v), va="center", fontsize=7)
        ax.margins(x=0.35)
    axes[0].set_yticks(list(range(len(keys))))
    axes[0].set_yticklabels([SHORT[k] for k in keys])
    axes[0].invert_yaxis()
    fig.suptitle(f"Adafactor step time, {threads} threads (median)")
    fig.tight_layout()
    files["step_time"] = "step_time.png"
    fig.savefig(directory / files["step_time"], dpi=110)
    plt.close(fig)

    # Time against parameter count.
    fig, axes = plt.subplots(1, len(results["threads"]), figsize=(6 * len(results["threads"]), 4.6),
                             sharey=True, squeeze=False)
    for ax, th in zip(axes[0], results["threads"]):
        for k in keys:
            pts = [(results["sets"][s]["numel"], L.time(s, th, k)) for s in results["sweep"]]
            pts = [(n, t) for n, t in pts if t]
            if pts:
                ax.plot([n for n, _ in pts], [t * 1e3 for _, t in pts], marker="o", ms=3,
                        label=SHORT[k], color=colors.get(k),
                        linestyle="--" if k == "floor" else "-")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("parameters (one matrix)")
        ax.set_title(f"{th} thread(s)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("ms per step")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("Step time against parameter count")
    fig.tight_layout()
    files["scaling"] = "scaling.png"
    fig.savefig(directory / files["scaling"], dpi=110)
    plt.close(fig)

    # Peak added memory, as a share of the parameter bytes, per set.
    if results["peak"]:
        sets_ = results["peak_sets"]
        impls_ = [i["key"] for i in results["impls"]
                  if any((k, i["key"]) in L.peak for k in sets_)]
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(impls_) * len(sets_) + 1.4))
        h = 0.8 / len(sets_)
        floor_pct = 1e-3
        for j, k in enumerate(sets_):
            ys, vals = [], []
            for y, key in enumerate(impls_):
                r = L.peak.get((k, key))
                if r is None:
                    continue
                ys.append(y + (j - (len(sets_) - 1) / 2) * h)
                vals.append((100 * r["added"] / r["param_bytes"], r["added"]))
            ax.barh(ys, [max(v, floor_pct) for v, _ in vals], height=h * 0.9,
                    label=set_name(results, k), color=["#1f5fbf", "#c9a227", "#2e9e5b"][j % 3])
            for y, (v, added) in zip(ys, vals):
                ax.text(max(v, floor_pct), y, f" {fmt_bytes(added)}", va="center", fontsize=7)
        ax.axvline(1.0, color="k", linestyle="--", linewidth=1)
        ax.text(1.0, -0.6, " target: 1%", fontsize=8)
        ax.set_yticks(range(len(impls_)))
        ax.set_yticklabels([SHORT[k] for k in impls_])
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.margins(x=0.25)
        ax.set_xlabel("peak memory one step adds, % of parameter bytes (log)")
        ax.set_title("Peak memory a step adds (fresh process each)", fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        files["peak_memory"] = "peak_memory.png"
        fig.savefig(directory / files["peak_memory"], dpi=110)
        plt.close(fig)
    return files


# ------------------------------------------------------------------ markdown
def _md(rows) -> list[str]:
    def esc(v):
        return str(v).replace("|", "\\|")

    out = ["| " + " | ".join(esc(c) for c in rows[0]) + " |",
           "|" + "|".join("---" for _ in rows[0]) + "|"]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows[1:]]
    return out


def write_docs(results, docs_dir: Path) -> Path:
    docs_dir.mkdir(parents=True, exist_ok=True)
    img_dir = docs_dir / "performance"
    files = plots(results, img_dir)
    m = results["meta"]
    L = Lookup(results)
    t0 = results["threads"][0]
    lines = [
        "# Performance",
        "",
        "<!-- Generated by benchmarks/run.py (`make bench`): edit benchmarks/bench/report.py,"
        " not this file. -->",
        "",
        "One optimizer step, timed side by side in one run of `make bench` (or "
        "`.venv/bin/python benchmarks/run.py`), which rewrites this page and its plots. "
        "**All figures are from one run**"
        + (" (a `--smoke` run: tiny sizes, the timings mean nothing)" if m["smoke"] else "")
        + f", on {m['date']}:",
        "",
        f"- machine: {m.get('cpu')}, {m['cores']} cores, {m.get('memory_gib')} GiB, "
        f"{m['platform']}",
        f"- torch {m['torch']} ({m['aten_parallel']}), tcltorch {m['tcltorch']} "
        f"(fused loops: {m['tcltorch_cpu_capability']}), transformers {m.get('transformers')}, "
        f"Python {m['python']}",
        f"- command: `{m['command']}`. " + run_summary(results),
        "",
        "## Targets",
        "",
        f"Checked at {t0} thread(s)"
        + (" (all the machine's cores)" if t0 == m["cores"] else "") + "; the same ratios at "
        + ", ".join(str(t) for t in results["threads"][1:]) + " thread(s) follow.",
        "",
    ]
    lines += _md(targets_table(results, t0))
    for th in results["threads"][1:]:
        lines += ["", f"At {th} thread(s):", ""]
        rows = targets_table(results, th)
        lines += _md(rows[:1] + [r for r in rows[1:] if r[1] != "-"])
    busy = disturbed(results)
    if busy:
        lines = lines[:lines.index("## Targets")] + [
            "**Warning:** other processes took over 10 % of the CPU while timing "
            + ", ".join(busy) + "; those figures are unreliable.", ""] + lines[
            lines.index("## Targets"):]
    lines += ["", "## Step time", ""]
    for th in results["threads"]:
        lines += [f"Median time of one step, {th} thread(s), and its ratio to the C++ door:", ""]
        lines += _md(main_table(results, th))
        lines.append("")
    if "step_time" in files:
        lines += [f"![step time per implementation](performance/{files['step_time']})", ""]
    lines += ["Parameter sets (float32, gradients randn):", ""]
    for k in results["main_sets"]:
        s = results["sets"][k]
        lines.append(f"- **{k}**: {s['title']} ({s['numel']:,} parameters in {s['tensors']} "
                     f"tensors)")
    lines += ["", "## Size sweep", "",
              "One matrix per size, 1M to 64M parameters; *C++/floor* is the C++ door's time "
              "over the floor's, *floor GB/s* the floor's bytes (5 x 4 bytes per parameter) "
              "over its time.", ""]
    for th in results["threads"]:
        lines += [f"{th} thread(s):", ""]
        lines += _md(sweep_table(results, th))
        lines.append("")
    if "scaling" in files:
        lines += [f"![time against parameter count](performance/{files['scaling']})", ""]
    if results["peak"]:
        lines += ["## Memory", "",
                  "Each implementation in a fresh process: *state* is the bytes of the "
                  "optimizer's state tensors (the Tcl door's is the core's, as the C++ "
                  "door's); *peak added* is how far one step raises the resident set above "
                  "parameters + gradients + state.", ""]
        for k in results["peak_sets"]:
            lines += [f"{results['sets'][k]['title']}:", ""]
            lines += _md(memory_table(results, k))
            lines.append("")
        if "peak_memory" in files:
            lines += [f"![peak added memory](performance/{files['peak_memory']})", ""]
    unavailable = [i for i in results["impls"] if not i["available"]]
    lines += ["## Method", "",
              "- **Timing.** Every row is timed the same way (`benchmarks/bench/timing.py`): "
              "batches of K steps, timed where the steps run (`time.perf_counter` around a "
              "loop of `opt.step()` in Python, Tcl's `time` command, `std::chrono` in C++). "
              "Each row takes a warm-up step (it creates the state) and a timed step that "
              "sizes its batch to about 50 ms; then the rows of a parameter set take their "
              "samples round-robin, one batch per row per round, up to 15 samples (rows "
              "slower than 0.1 s per step: fewer, at least 5). A sample is the mean step "
              "time of its batch; the tables show the median sample. Interleaving spreads "
              "disturbances from other processes over all rows, and pairs the samples of a "
              "round: the Tcl door's overhead over the C++ door is the median of the "
              "per-round differences. Before each sample a row takes untimed warm-up steps "
              "(about 8 ms, at least one): after other work, the first steps of a row run "
              "slow. Where the next batch runs in another process (the C++ rows run in "
              "their own) at 2 threads, the run first pauses 20 ms: OpenMP's idle threads "
              "spin for milliseconds after a parallel region, and would take the cores from "
              "the other process's next steps. At 1 thread both processes are pinned to "
              "the first CPU (`benchmarks/bench/affinity.py`), so that a process waking "
              "from the other's pipe does not start on another core. Each row gets its own "
              "copy of the same parameters and gradients; gradients stay fixed between "
              "steps.",
              "- **Same algorithm.** Every Adafactor runs its defaults: tcltorch's core and "
              "`torch.optim.Adafactor` compute the same thing (lr 1e-2, relative step, "
              "`beta2_decay` -0.8, eps1 = finfo(float32).eps, eps2 = 1e-3, d = 1); "
              "transformers' (and timm's) is the paper's variant with the same work per "
              "element. The Tcl door is created with `-variant torch -lr 0.01 -eps2 "
              "1.1920928955078125e-07 -epsScale 1e-3`, the core's defaults (the Tcl "
              "command's own defaults are transformers'). One difference in what is "
              "factored: on the conv set, timm factors each weight over its two channel "
              "dimensions (like tcltorch's `factored_dims=\"largest_two\"`), the others "
              "over the 3x3 kernel (torch's rule, the last two dimensions), so timm's conv "
              "row does the work of large matrices, not of many 3x3 ones.",
              "- **The doors.** *C++*: `benchmarks/cpp/bench_step.cpp`, built against the "
              "installed package like `examples/cpp` (into `build/bench-cpp`), times "
              "`tcltorch::Adafactor::step()`. *Python*: `tcltorch._C.Adafactor(params).step()` "
              "(a `tcltorch.Adafactor` row appears when that class exists). *Tcl*: a "
              "`tkinter` interpreter with `package require torch`; the parameters are made "
              "in Python and registered with `Interp.put_tensor`, and Tcl's own `time` "
              "command times `torch::optimizer_step $opt`, so no Python runs between steps.",
              "- **Threads.** `torch.set_num_threads(n)` in Python, `at::set_num_threads(n)` "
              "in C++; the Tcl door shares the Python process's ATen.",
              "- **Bandwidth floor.** The memory traffic of an Adafactor step in its usual "
              "form is three reads of the gradient (row and column statistics; the RMS of the "
              "update; the update) and one read and one write of the parameter: 20 bytes per "
              "float32 parameter. The floor (`floor_step` in `bench_step.cpp`) does exactly "
              "those passes, tensor by tensor, on ATen's threads in chunks of 32K elements (as "
              "the fused kernel splits its work), with the least arithmetic that keeps the "
              "loads alive (sums of squares, then `p -= a * g`) in AVX2 vectors with four "
              "accumulators, so it is bound by memory, not by arithmetic. Like the step, it "
              "benefits from caches where a tensor fits. tcltorch's kernel reads the gradient "
              "of a large matrix only twice: its first pass also sums, row by row from the L1 "
              "cache, `G^2` over each row's new statistic down the columns, which gives the "
              "RMS of the update without a pass of its own (docs/algorithm.md), so it can run "
              "below this floor (16 bytes per parameter). For factored parameters of more "
              "than 2048 elements the sum of param^2 for RMS(param) is kept from the last "
              "pass of the previous step while the parameter is unchanged (by its version "
              "counter); otherwise the first pass reads the parameter too. The first pass "
              "over a large matrix takes eight rows at once, "
              "spread over its block (eight memory streams), the update one row at a time "
              "in memory order (one stream, as the floor's); `benchmarks/cpp/row_streams.cpp` "
              "times both patterns on the machine at hand.",
              "- **Peak memory.** `benchmarks/peak_memory.py` (and `bench_step peak`), the "
              "method of `tests/tools/step_peak_memory.py`: in a fresh process, a warm-up "
              "step, then `/proc/self/clear_refs` \"5\" resets the peak RSS, one step, and "
              "VmHWM minus the RSS before it. `MALLOC_MMAP_THRESHOLD_=65536` makes glibc "
              "return freed blocks to the system, so temporaries freed by the warm-up step "
              "cannot be reused unseen by the measured one.",
              "- **Noise.** The machine may run other work. Before each parameter set the "
              "run waits until other processes take under 10 % of the CPU (at most 60 s "
              "in all: `--wait-quiet`), and it reports the share of CPU time they took "
              "while each set was timed (the last row of the step-time tables, the last "
              "column of the sweep). Two threads on two cores are the most sensitive: a "
              "busy core stalls every barrier of a parallel loop, and a step's time can "
              "jump several-fold.",
              "- **timm.** `make bench` installs timm without its dependencies: PyPI's "
              "timm needs torchvision, and PyPI's torchvision does not load beside the "
              "torch 2.13.0 CPU wheel (\"operator torchvision::nms does not exist\"). "
              "timm's package init imports torchvision, so the bench loads "
              "`timm.optim.adafactor` (timm's own code, which needs only torch) on its "
              "own, with bare `timm` and `timm.optim` packages standing for the real "
              "ones; with a timm whose init loads, it is imported as usual.",
              ]
    for i in unavailable:
        lines.append(f"- **{i['label']}**: not available in this run ({i['reason']}).")
    if any(i["key"] == "timm" for i in unavailable):
        lines.append("  Install it with `pip install --no-deps timm` (as `make bench` does) "
                     "for its row.")
    lines.append("")
    if results.get("distributed"):
        from .distributed import table as distributed_table
        lines += ["## Sharded Adafactor on 2 ranks", "",
                  "`torch::optimizer_adafactor -shardState 1` on the transformer set, launched "
                  "by torchrun on 127.0.0.1 with one thread per rank (`benchmarks/"
                  "distributed_step.tcl`): the median step time on each rank (its share of "
                  "the update, then the broadcast of every parameter from its owner) and the "
                  "optimizer state each rank holds.", ""]
        lines += _md(distributed_table(results))
        lines.append("")
    lines += training_report.markdown(results, img_dir)
    path = docs_dir / "performance.md"
    path.write_text("\n".join(lines))
    return path
