"""Scale-out from Tcl: the torch package's distributed commands on c10d
(TCPStore + ProcessGroupGloo), 2 processes on 127.0.0.1 launched by
torchrun. References are plain torch computations made here."""
from __future__ import annotations

import ast
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, run_tclsh, tclsh_env

HERE = Path(__file__).resolve().parent / "dist_tcl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*program: str, nproc: int = 2, timeout: float = 120,
             env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node N --no-python program...` on a free port."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
           "--no-python", *program]
    env = tclsh_env()
    env["OMP_NUM_THREADS"] = "1"
    env.update(env_extra or {})
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def tcl_list(text: str) -> list:
    """A Tcl list of numbers and nested lists, as Python lists of floats."""
    stack: list[list] = [[]]
    for token in re.findall(r"[{}]|[^\s{}]+", text):
        if token == "{":
            stack.append([])
        elif token == "}":
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(float(token))
    return stack[0]


def raw(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        name, _, rest = line.partition(" ")
        out[name] = rest
    return out


def full_batch():
    x = torch.tensor([[math.sin(i * 4 + j + 1) for j in range(4)]
                      for i in range(8)], dtype=torch.float64).float()
    y = torch.tensor([[math.cos(i), math.sin(2 * i)]
                      for i in range(8)], dtype=torch.float64).float()
    return x, y


def forward(params, x):
    w1, b1, w2, b2 = params
    return torch.tanh(x @ w1.T + b1) @ w2.T + b2


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    run = torchrun("tclsh", str(HERE / "train_ranks.tcl"), str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    ranks = [raw(out / f"rank{r}.txt") for r in range(2)]
    return out, ranks


def parsed(record: str) -> list[torch.Tensor]:
    """The parameters of a `dump` record."""
    values = tcl_list(record)[0]
    return [torch.tensor(v, dtype=torch.float32) for v in values]


def test_data_parallel_from_different_weights_equals_one_process_on_the_full_batch(two_ranks):
    _, ranks = two_ranks
    before = [parsed(r["before"]) for r in ranks]
    start = [parsed(r["start"]) for r in ranks]
    # The ranks started apart; wrapping broadcast rank 0's weights.
    assert not all(torch.equal(a, b) for a, b in zip(before[0], before[1]))
    for a, b, c in zip(start[0], start[1], before[0]):
        assert torch.equal(a, b) and torch.equal(a, c)
    # The reference: plain torch, one process, the full batch, SGD lr 0.1.
    params = [p.clone().requires_grad_(True) for p in start[0]]
    x, y = full_batch()
    for _ in range(5):
        loss = torch.nn.functional.mse_loss(forward(params, x), y)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= 0.1 * g
    for r in ranks:
        for got, want in zip(parsed(r["end"]), params):
            rel = (got - want.detach()).norm() / want.detach().norm()
            assert rel <= 1e-5, rel
    assert not torch.equal(parsed(ranks[0]["end"])[0], start[0][0])


def test_sharded_adafactor_equals_unsharded_bit_for_bit(two_ranks):
    _, ranks = two_ranks
    for r in ranks:
        assert r["adafactor0"] == r["adafactor1"]
    assert ranks[0]["adafactor1"] == ranks[1]["adafactor1"]
    # Each rank keeps part of the state; together all of it.
    unsharded = [int(r["state_bytes0"]) for r in ranks]
    sharded = [int(r["state_bytes1"]) for r in ranks]
    assert unsharded[0] == unsharded[1]
    assert sum(sharded) == unsharded[0]
    assert all(0 < s < unsharded[0] for s in sharded)


def test_sharded_adafactor_with_parameter_groups_equals_unsharded_bit_for_bit(two_ranks):
    _, ranks = two_ranks
    for r in ranks:
        assert r["groups0"] == r["groups1"]
    assert ranks[0]["groups1"] == ranks[1]["groups1"]
    unsharded = [int(r["group_bytes0"]) for r in ranks]
    sharded = [int(r["group_bytes1"]) for r in ranks]
    assert unsharded[0] == unsharded[1] and sum(sharded) == unsharded[0]
    assert all(0 < s < unsharded[0] for s in sharded)


def test_checkpoint_at_two_ranks_resumes_in_one_plain_process(two_ranks):
    out, ranks = two_ranks
    run = run_tclsh(None, str(out), str(free_port()), file=HERE / "resume.tcl", timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    resumed = raw(out / "resume.txt")
    unsharded_bytes = int(ranks[0]["state_bytes0"])
    assert int(resumed["loaded0"]) == unsharded_bytes
    assert int(resumed["loaded1"]) == unsharded_bytes  # world size 1: one rank owns all
    want = parsed(ranks[0]["adafactor1"])
    for shard in ("0", "1"):
        for got, w in zip(parsed(resumed["resumed" + shard]), want):
            assert ((got - w).norm() / w.norm()) <= 1e-5
    # Unsharded and sharded (at another world size) load the same numbers.
    assert resumed["resumed0"] == resumed["resumed1"]


@pytest.fixture(scope="module")
def early_exit(tmp_path_factory):
    out = tmp_path_factory.mktemp("early")
    run = torchrun("tclsh", str(HERE / "early_exit.tcl"), str(out), timeout=90)
    assert run.returncode == 0, run.stdout + run.stderr
    return out


def test_sharded_checkpoint_continues_in_python_and_a_python_file_loads_in_tcl(
        two_ranks, tmp_path):
    """The consolidated file of the 2-rank sharded save, read by the Python door,
    continues in tcltorch.Adafactor to the uninterrupted 2-rank numbers; the
    state dict written back as a file loads in the Tcl door, whose steps then
    equal Python's bit for bit."""
    import tcltorch
    from tcltorch.tcl import Interp

    out, ranks = two_ranks
    params = [p.clone().requires_grad_(True) for p in parsed(ranks[0]["at3"])]
    opt = tcltorch.Adafactor(params)  # Python's defaults: the file's options replace them
    opt.load_state_dict(tcltorch.load_optimizer_file(out / "adafactor.pt"))
    group = opt.param_groups[0]
    assert (group["lr"], group["beta1"], group["weight_decay"], group["relative_step"]) == (
        0.05, 0.9, 0.01, False)
    assert len(opt.state_dict()["state"]) == 4
    x, y = full_batch()

    def grads(ps):
        return torch.autograd.grad(torch.nn.functional.mse_loss(forward(ps, x), y), ps)

    for _ in range(3):  # steps 4..6
        for p, g in zip(params, grads(params)):
            p.grad = g
        opt.step()
    for got, want in zip(params, parsed(ranks[0]["adafactor1"])):
        assert ((got.detach() - want).norm() / want.norm()) <= 1e-5

    path = tmp_path / "from_python.pt"
    tcltorch.save_optimizer_file(opt.state_dict(), path)
    tcl = Interp()
    twins = [p.detach().clone().requires_grad_(True) for p in params]
    handles = " ".join(tcl.put_tensor(t) for t in twins)
    opt_tcl = tcl.eval(f"torch::optimizer_adafactor -parameters {{{handles}}}")
    tcl.call("torch::optimizer_load", opt_tcl, str(path))
    for _ in range(2):
        for ps in (params, twins):
            for p, g in zip(ps, grads(ps)):
                p.grad = g
        opt.step()
        tcl.call("torch::optimizer_step", opt_tcl)
    for a, b in zip(params, twins):
        assert torch.equal(a, b)
    tcl.close()


def test_a_rank_that_exits_early_fails_the_others_next_collective(early_exit):
    text = (early_exit / "early.txt").read_text()
    rc, code, elapsed, msg = tcl_words(text)
    assert rc == "1", text
    assert code.split()[:2] == ["TORCH", "DISTRIBUTED"], text
    assert code.split()[2] in ("PEER", "TIMEOUT", "COLLECTIVE"), text
    assert int(elapsed) < 5000 + 2000, text
    assert msg.startswith("torch::all_reduce: ")


def faults(path: Path) -> dict[str, list[str]]:
    return {w[0]: w[1:] for w in map(tcl_words, path.read_text().splitlines())}


def test_sharded_save_and_load_report_file_errors_as_file_and_a_lost_peer_as_distributed(
        early_exit):
    ranks = [faults(early_exit / f"faults{r}.txt") for r in range(2)]
    for r in ranks:
        assert r["save_good"][0] == "0" and r["load_good"][0] == "0", r
        for name in ("save_bad_dir", "load_missing"):
            rc, code, _, msg = r[name]
            assert rc == "1" and code.split()[:2] == ["TORCH", "FILE"], (name, r[name])
    # One rank's unreadable file fails the load on every rank, each saying why.
    rc, code, _, msg = ranks[1]["load_one_missing"]
    assert rc == "1" and code == f"TORCH FILE {early_exit / 'missing.pt'}", msg
    rc, code, _, msg = ranks[0]["load_one_missing"]
    assert rc == "1" and code == f"TORCH FILE {early_exit / 'good.pt'}", msg
    assert "rank 1 could not load it" in msg
    # The peer has gone: the collectives inside save and load fail within the timeout.
    for name in ("save_peer_gone", "load_peer_gone"):
        rc, code, elapsed, msg = ranks[0][name]
        assert rc == "1" and code.split()[:2] == ["TORCH", "DISTRIBUTED"], (name, ranks[0][name])
        assert code.split()[2] in ("PEER", "TIMEOUT", "COLLECTIVE"), (name, code)
        assert int(elapsed) < 5000 + 2000, (name, elapsed)
        assert msg.startswith("cannot "), msg
    assert not (early_exit / "after.pt").exists()


def tcl_words(line: str) -> list[str]:
    """Splits one line of a Tcl list of simple words and braced groups."""
    words, depth, cur = [], 0, ""
    for ch in line.strip():
        if ch == "{":
            if depth:
                cur += ch
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth:
                cur += ch
        elif ch == " " and depth == 0:
            words.append(cur)
            cur = ""
        else:
            cur += ch
    words.append(cur)
    return words


@pytest.fixture(scope="module")
def errors_run():
    run = run_tclsh(None, str(free_port()), str(free_port()), file=HERE / "errors.tcl",
                    timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    return {tcl_words(line)[0]: tcl_words(line)[1:] for line in run.stdout.splitlines()}


@pytest.mark.parametrize("name", ["all_reduce_before", "broadcast_before", "all_gather_before",
                                  "barrier_before", "rank_before", "world_before",
                                  "ddp_before", "shard_before"])
def test_collectives_before_init_are_state_errors(errors_run, name):
    code, msg = errors_run[name]
    assert code == "TORCH DISTRIBUTED STATE"
    assert "call torch::distributed_init first" in msg


@pytest.mark.parametrize("name,option", [("bad_rank", "-rank"), ("negative_rank", "-rank"),
                                         ("bad_world", "-worldSize"), ("bad_port", "-masterPort"),
                                         ("bad_backend", "-backend"),
                                         ("bad_timeout", "-timeout")])
def test_bad_init_options_name_the_option(errors_run, name, option):
    code, msg = errors_run[name]
    assert code.split()[:3] == ["TORCH", "DISTRIBUTED", "VALUE"], (code, msg)
    assert option in msg


def test_init_without_torchrun_environment_says_what_is_missing(errors_run):
    code, msg = errors_run["no_env"]
    assert code == "TORCH DISTRIBUTED VALUE"
    assert "WORLD_SIZE" in msg or "RANK" in msg


def test_a_peer_that_never_arrives_fails_within_the_timeout(errors_run):
    code, msg, elapsed = errors_run["never_arrives"]
    assert code.split()[:2] == ["TORCH", "DISTRIBUTED"]
    assert code.split()[2] in ("INIT", "TIMEOUT")
    assert int(elapsed) < 2000 + 4000


def test_one_rank_group_collectives_and_state_errors(errors_run):
    assert errors_run["one_rank"] == ["1.0 -2.0 3.0", "1 3", "0", "1"]
    assert errors_run["second_init"][0] == "TORCH DISTRIBUTED STATE"
    assert errors_run["bad_op"][0].split()[:3] == ["TORCH", "DISTRIBUTED", "VALUE"]
    assert errors_run["bad_src"][0] == "TORCH DISTRIBUTED VALUE -src 1"
    assert errors_run["avg_int"][0] == "TORCH DISTRIBUTED VALUE"
    assert errors_run["after_destroy"][0] == "TORCH DISTRIBUTED STATE"
    assert errors_run["destroy_twice"][0] == "ok"


def test_no_thread_or_descriptor_outlives_a_group(errors_run):
    before, after_destroy, after_delete = errors_run["leaks"]
    assert before == after_destroy == after_delete


def test_a_tcl_rank_and_a_python_rank_train_to_the_same_numbers(tmp_path):
    run = torchrun(str(HERE / "mixed.sh"), str(tmp_path),
                   env_extra={"PYTHON": sys.executable})
    assert run.returncode == 0, run.stdout + run.stderr
    tcl = raw(tmp_path / "mixed0.txt")
    py = raw(tmp_path / "mixed1.txt")
    for name in ("start", "end"):
        got = parsed(tcl[name])
        want = [torch.tensor(v, dtype=torch.float32) for v in ast.literal_eval(py[name])]
        for a, b in zip(got, want):
            assert torch.equal(a, b), name
    assert not torch.equal(parsed(tcl["start"])[0], parsed(tcl["end"])[0])


DIGITS_FINAL = re.compile(r"^final test accuracy: (\S+)%$", re.M)


def digits_accuracy(nproc: int, epochs: int = 3) -> float:
    run = torchrun("tclsh", str(REPO / "examples" / "train_digits_ddp.tcl"), str(epochs),
                   nproc=nproc, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{nproc} ranks" in run.stdout
    return float(DIGITS_FINAL.search(run.stdout).group(1))


def test_digits_example_on_two_ranks_reaches_the_one_rank_accuracy():
    one, two = digits_accuracy(1), digits_accuracy(2)
    assert one >= 90.0
    assert abs(two - one) <= 1.0, (one, two)


def test_cpp_example_runs_on_two_ranks(tmp_path):
    prefix = subprocess.run([sys.executable, "-m", "tcltorch", "cmake-prefix"],
                            capture_output=True, text=True, check=True).stdout.strip()
    build = tmp_path / "build"
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    subprocess.run(["cmake", "-S", str(REPO / "examples" / "cpp_distributed"), "-B", str(build),
                    f"-DCMAKE_PREFIX_PATH={prefix}", "-DCMAKE_BUILD_TYPE=Release"],
                   check=True, capture_output=True, env=env, timeout=300)
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True, env=env,
                   timeout=600)
    run = torchrun(str(build / "train_digits_ddp"), str(REPO / "examples" / "data" / "digits.txt"),
                   "2", timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    acc = float(DIGITS_FINAL.search(run.stdout).group(1))
    assert acc >= 90.0
    # Each rank holds part of the optimizer state.
    assert len(re.findall(r"^rank \d: optimizer state \d+ bytes$", run.stdout, re.M)) == 2
