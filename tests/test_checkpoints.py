"""C++ checkpoints (tcltorch::save_optimizer / load_optimizer, reached through
tcltorch._C.Adafactor.save/load): complete or absent, checked before use."""
from __future__ import annotations

import os

import pytest
import torch

from tcltorch import _C


def trained(shapes=((6, 5), (7,)), steps=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ps = [torch.randn(s, generator=gen) for s in shapes]
    opt = _C.Adafactor(ps, beta1=0.9)
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return ps, opt


def step_all(ps, opt, seed=5):
    gen = torch.Generator().manual_seed(seed)
    for p in ps:
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()


def test_save_leaves_only_the_file_and_round_trips(tmp_path):
    ps, opt = trained()
    path = tmp_path / "opt.pt"
    opt.save(str(path))
    assert os.listdir(tmp_path) == ["opt.pt"]
    twin_ps = [p.clone() for p in ps]
    twin = _C.Adafactor(twin_ps, beta1=0.9)
    twin.load(str(path))
    step_all(ps, opt)
    step_all(twin_ps, twin)
    for a, b in zip(ps, twin_ps):
        assert torch.equal(a, b)


def test_save_into_a_missing_directory_fails_cleanly(tmp_path):
    _, opt = trained()
    with pytest.raises(RuntimeError):
        opt.save(str(tmp_path / "no" / "opt.pt"))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage", "wrong_shapes"])
def test_bad_files_leave_the_optimizer_unchanged(tmp_path, damage):
    path = tmp_path / "opt.pt"
    if damage == "wrong_shapes":
        _, other = trained(shapes=((5, 6), (7,)))
        other.save(str(path))
    elif damage != "missing":
        _, good = trained()
        good.save(str(path))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\0" * len(data))
    ps, opt = trained()
    twin_ps, twin = trained()
    with pytest.raises(RuntimeError):
        opt.load(str(path))
    step_all(ps, opt)
    step_all(twin_ps, twin)
    for a, b in zip(ps, twin_ps):
        assert torch.equal(a, b)
