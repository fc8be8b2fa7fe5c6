"""The training-step sections of the report (bench/report.py calls these):
the whole training step per optimizer (results["training"], from
bench/training.py) and the char-LM step from Tcl and Python
(results["charlm"], from benchmarks/charlm.py): tables, targets, a plot and
the docs/performance.md sections."""
from __future__ import annotations

import statistics
from pathlib import Path

IN_BACKWARD = "ours_in_backward"
USUAL = "ours"
PEAK_LIMIT = 1.2  # x the largest parameter's bytes, above the activations
TIME_LIMIT = 1.05  # x the usual step's time


def _fmt_bytes(n):
    from .report import fmt_bytes
    return fmt_bytes(n)


def _fmt_time(s):
    from .report import fmt_time
    return fmt_time(s)


def _rows(tr) -> dict:
    return {r["key"]: r for r in tr["rows"]}


def activations(tr) -> int:
    return tr["activations"]["forward_backward"]


def paired_ratio(tr, a: str, b: str):
    """Median over the timing rounds of a's time / b's time in the same round."""
    rows = _rows(tr)
    ra, rb = rows.get(a, {}).get("rounds"), rows.get(b, {}).get("rounds")
    if not ra or not rb:
        return None
    return statistics.median(x / y for x, y in zip(ra, rb))


def others_line(tr) -> str:
    share = tr.get("other_cpu_share")
    return ("" if share is None else
            f"Other processes took {100 * share:.0f} % of the machine's CPU time meanwhile.")


def model_line(tr) -> str:
    c, big = tr["config"], tr["largest_param"]
    return (f"charlm.CharLM: vocabulary {c['vocab']}, d_model {c['dModel']}, {c['layers']} "
            f"layers of {c['heads']} heads and an MLP of {c['ff']}, batch {c['batch']} x "
            f"{c['context']} tokens; {tr['param_numel']:,} float32 parameters in "
            f"{tr['tensors']} tensors ({_fmt_bytes(tr['param_bytes'])}), the largest "
            f"{big['name']} {'x'.join(map(str, big['shape']))} ({_fmt_bytes(big['bytes'])})")


# ------------------------------------------------------------------ targets
def targets(results) -> list[dict]:
    out = []

    def add(tid, text, threads, value, limit, note):
        out.append({"id": tid, "text": text, "threads": threads, "door": "py", "value": value,
                    "op": "<=", "limit": limit, "unit": "x",
                    "met": None if value is None else value <= limit, "note": note})

    tr = results.get("training")
    if tr:
        rows = _rows(tr)
        sib, usual = rows.get(IN_BACKWARD), rows.get(USUAL)
        big, act = tr["largest_param"]["bytes"], activations(tr)
        if sib and sib["available"]:
            add("train_in_backward_peak", "training step, step in backward: (peak added - "
                "activations) / largest parameter's bytes", None,
                (sib["added"] - act) / big, PEAK_LIMIT,
                f"{_fmt_bytes(sib['added'])} added, activations {_fmt_bytes(act)}, "
                f"largest parameter {_fmt_bytes(big)}; {tr['threads']} threads")
        else:
            add("train_in_backward_peak", "training step, step in backward: (peak added - "
                "activations) / largest parameter's bytes", None, None, PEAK_LIMIT,
                f"not available: {sib['reason'] if sib else 'no row'}")
        value = paired_ratio(tr, IN_BACKWARD, USUAL)
        note = (f"median of per-round ratios, {len(sib['rounds'])} rounds; "
                f"{_fmt_time(sib['step_s'])} vs {_fmt_time(usual['step_s'])}"
                if value is not None else
                f"not available: {sib['reason'] if sib else 'no row'}")
        add("train_in_backward_time", "training step: step in backward / usual "
            "(tcltorch.Adafactor)", None, value, TIME_LIMIT, note)
    cl = results.get("charlm")
    if cl:
        for row in cl["rows"]:
            add("charlm_tcl", "char-LM training step: Tcl / Python", row["threads"], row["ratio"],
                cl["target"], f"{_fmt_time(row['tcl_s_per_step'])} vs "
                f"{_fmt_time(row['python_s_per_step'])} (medians), the median of "
                f"{cl['rounds']} rounds' ratios")
    return out


# ------------------------------------------------------------------ tables
def table(tr) -> list[list[str]]:
    rows = _rows(tr)
    usual = rows.get(USUAL, {}).get("step_s")
    big, act, pb = tr["largest_param"]["bytes"], activations(tr), tr["param_bytes"]
    out = [["implementation", "step time", "/ usual", "peak added", "/ param bytes",
            "(peak - activations) / largest param", "state", "grads after backward", "note"]]
    for r in tr["rows"]:
        if not r["available"]:
            out.append([r["label"]] + ["-"] * 7 + [f"not available here: {r['reason']}"])
            continue
        t = r.get("step_s")
        out.append([r["label"], _fmt_time(t),
                    f"{paired_ratio(tr, r['key'], USUAL):.2f}x" if t and usual else "-",
                    _fmt_bytes(r["added"]), f"{100 * r['added'] / pb:.0f} %",
                    f"{(r['added'] - act) / big:.2f}x", _fmt_bytes(r["state_bytes"]),
                    "kept" if r["grads_after_backward"] else "None", ""])
    return out


def activation_lines(tr) -> list[str]:
    a = tr["activations"]
    return [f"activations: {_fmt_bytes(a['forward_backward'])} (forward + backward, no "
            f"parameter gradient), of which forward alone {_fmt_bytes(a['forward'])}; "
            f"largest parameter {_fmt_bytes(tr['largest_param']['bytes'])}; parameters "
            f"{_fmt_bytes(tr['param_bytes'])}"]


def charlm_table(cl) -> list[list[str]]:
    out = [["threads", "Tcl step", "Tcl tokens/s", "Python step", "Python tokens/s",
            "Tcl / Python"]]
    for r in cl["rows"]:
        out.append([str(r["threads"]), _fmt_time(r["tcl_s_per_step"]),
                    f"{r['tcl_tokens_per_s']:.0f}", _fmt_time(r["python_s_per_step"]),
                    f"{r['python_tokens_per_s']:.0f}", f"{r['ratio']:.3f}x"])
    return out


def charlm_line(cl) -> str:
    c = cl["config"]
    return (f"examples/train_charlm.tcl's model ({c['layers']} layers, d_model {c['dModel']}, "
            f"batch {c['batch']} x {c['context']} tokens), medians of {cl['rounds']} rounds "
            f"of {cl['steps']} steps; the ratio is the median of the rounds' own ratios, the "
            "two runs of a round back to back, the side going first alternating")


def text(results) -> list[str]:
    """The sections of the printed report."""
    from .report import _grid

    out = []
    tr = results.get("training")
    if tr:
        out += ["", f"Training step (forward + backward + step), {tr['threads']} threads, "
                    "fresh process per figure: " + model_line(tr)]
        out += _grid(table(tr))
        out += activation_lines(tr) + [others_line(tr)]
    cl = results.get("charlm")
    if cl:
        out += ["", "Char-LM training step, Tcl and Python: " + charlm_line(cl)]
        out += _grid(charlm_table(cl))
    return out


# ------------------------------------------------------------------ plot
def plot(results, directory: Path) -> str | None:
    tr = results.get("training")
    if not tr:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 - plots are optional
        return None
    rows = [r for r in tr["rows"] if r["available"]]
    if not rows:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    big, act, pb = tr["largest_param"]["bytes"], activations(tr), tr["param_bytes"]
    colors = {"ours": "#1f5fbf", IN_BACKWARD: "#7ab3f0", "torch_adafactor": "#d9534f",
              "torch_in_backward": "#f0a09e", "adamw_fused": "#2e9e5b", "adalomo": "#c9a227"}
    labels = [r["label"].replace("(", "\n(", 1) if len(r["label"]) > 30 else r["label"]
              for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 0.55 * len(rows) + 2.8), sharey=True)
    y = list(range(len(rows)))
    ax1.barh(y, [r["added"] / 1e6 for r in rows], color=[colors.get(r["key"]) for r in rows])
    for yy, r in zip(y, rows):
        ax1.text(r["added"] / 1e6, yy, f" {_fmt_bytes(r['added'])}", va="center", fontsize=8)
    for x, style, text in ((act, ":", "activations"),
                           (act + PEAK_LIMIT * big, "--", "target of the step in backward"),
                           (pb, "-.", "parameter bytes")):
        ax1.axvline(x / 1e6, color="k", linestyle=style, linewidth=1, label=text)
    ax1.set_xlabel("peak memory a training step adds, MB")
    ax1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
    ax1.margins(x=0.2)
    ax1.set_yticks(y)
    ax1.set_yticklabels(labels, fontsize=8)
    ax1.invert_yaxis()
    ax2.barh(y, [r["step_s"] for r in rows], color=[colors.get(r["key"]) for r in rows])
    for yy, r in zip(y, rows):
        ax2.text(r["step_s"], yy, f" {_fmt_time(r['step_s'])}", va="center", fontsize=8)
    usual = _rows(tr).get(USUAL, {}).get("step_s")
    if usual:
        ax2.axvline(usual * TIME_LIMIT, color="k", linestyle="--", linewidth=1,
                    label=f"{TIME_LIMIT}x tcltorch.Adafactor")
        ax2.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    ax2.set_xlabel("seconds per training step (median)")
    ax2.margins(x=0.2)
    fig.suptitle(f"Training step of a {tr['param_numel'] / 1e6:.1f}M-parameter transformer, "
                 f"{tr['threads']} threads (fresh process each)", fontsize=10)
    fig.tight_layout()
    name = "training_step.png"
    fig.savefig(directory / name, dpi=110)
    plt.close(fig)
    return name


# ------------------------------------------------------------------ markdown
def markdown(results, img_dir: Path) -> list[str]:
    from .report import _md

    out = []
    tr = results.get("training")
    if tr:
        png = plot(results, img_dir)
        p = tr["plan"]
        out += ["## Training step", "",
                "A whole training step (forward, cross-entropy, backward, optimizer step) of a "
                f"transformer-like torch.nn model, at {tr['threads']} threads: "
                + model_line(tr) + ". *Peak added* is how far one step raises the resident "
                "set above parameters + optimizer state; *step time* the median over rounds "
                "of each row's median step; */ usual* the median of the per-round ratios to "
                "tcltorch.Adafactor's usual step. *Grads after backward*: whether the "
                "gradients are held until the step (kept) or freed as the step runs inside "
                "backward (None).", ""]
        out += _md(table(tr))
        out += ["", "- " + activation_lines(tr)[0] + ". " + others_line(tr), ""]
        if png:
            out += [f"![training step: peak memory and time](performance/{png})", ""]
        out += [
            "Method (`benchmarks/bench/training.py`, `benchmarks/training_step.py`):", "",
            "- **Fresh processes.** Every figure is taken in a process of its own: one per "
            "row for the peak, one for the activations, and for the time "
            f"{p['rounds']} rounds of one process per row (the order reversed every other "
            "round, so that a change in the machine's load falls on every row alike). "
            f"Each process builds the same seeded model and batch, takes a first step (it "
            f"creates the optimizer state, which so counts as state, not as peak) and "
            f"{p['warm']} warm-up step(s); a timing process then times {p['steps']} steps "
            "one by one and reports their median.",
            "- **Peak.** After the warm-up, the gradients are dropped, "
            "`/proc/self/clear_refs` \"5\" resets the peak RSS, one step runs, and the "
            "peak (VmHWM) minus the RSS before it is what the step adds above parameters + "
            "state: for the usual rows this includes every gradient. As for the optimizer "
            "step alone, `MALLOC_MMAP_THRESHOLD_=65536` makes glibc return freed blocks to "
            "the system, so that memory freed by an earlier step cannot be reused unseen "
            "(the timing processes run with glibc's defaults).",
            "- **Activations.** In their own process, without an optimizer: the peak of the "
            "forward alone, and of the forward plus a backward that computes only the "
            "activations' gradients (`torch.autograd.grad` to the outputs of the two "
            "embeddings): every parameter still requires grad, so the graph saves what it "
            "saves in training, but no parameter gradient is ever made. That second figure "
            "(activations, the backward's temporaries on them, the logits' gradient) is the "
            "*activations* of the target: the step in backward may add at most "
            f"{PEAK_LIMIT}x the largest parameter's bytes above it (the gradient being "
            "stepped and the step's temporaries).",
            "- **Checked, not assumed.** A row that steps in backward must leave every "
            "`.grad` None after `loss.backward()` and have moved the parameters by then, "
            "and nothing may move after it; a usual row must hold every gradient after "
            "backward and move the parameters in its step. A row that fails the check "
            "fails the run; a row that cannot run here is listed with the error it raised.",
            "- **Rows.** Every optimizer runs its defaults: tcltorch.Adafactor as usual "
            "(`opt.zero_grad(); loss.backward(); opt.step()`) and with "
            "`step_in_backward=True` in the same loop; torch.optim.Adafactor (on the CPU its "
            "default is the for-loop); `torch.distributed.optim._apply_optimizer_in_backward"
            "(torch.optim.Adafactor, params, {})` (one optimizer per parameter, stepped by a "
            "hook on its AccumulateGrad node, then `.grad = None`), with `loss.backward()` "
            "alone; torch.optim.AdamW(fused=True); and lomo-optim's AdaLomo "
            "(`fused_backward(loss, lr)`), whose constructor allocates its state with "
            "`.cuda()`.",
            ""]
    cl = results.get("charlm")
    if cl:
        out += ["## Char-LM training step from Tcl and Python", "",
                "`benchmarks/charlm.py`: " + charlm_line(cl) + ". One step: a batch of "
                "random windows, forward, cross-entropy, backward, gradient clipping and an "
                "Adafactor step; Tcl runs the example's own procs in tclsh, Python the same "
                "model in torch.nn with tcltorch.Adafactor, each in a fresh process, in "
                "alternating rounds, at the same thread count.", ""]
        out += _md(charlm_table(cl))
        out.append("")
    return out
