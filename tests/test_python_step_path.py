"""tcltorch.Adafactor's step path: group options kept between steps (and
refreshed when a group value changes), the optimizer hooks and the profiler
range of torch.optim.Optimizer, and the per-parameter entry (_step_params).
Numbers are checked against torch.optim.Adafactor run with the same edits."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import tcltorch
from reference import rel_err

SHAPES = [(13,), (6, 9), (2, 3, 4, 5)]


def make_params(seed=0, shapes=SHAPES):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).float() for s in shapes]


def grads_for(params, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=gen) for p in params]


def set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = g.clone()


def assert_close(ours, ref, tol=1e-6):
    for a, b in zip(ours, ref):
        assert rel_err(a, b) <= tol


def run_pair(edit, steps=8, ours_kwargs=None, ref_kwargs=None, groups=None):
    """Steps tcltorch.Adafactor and torch.optim.Adafactor side by side;
    edit(opt, i) runs on both before step i."""
    ours_p, ref_p = make_params(), make_params()
    mk = groups or (lambda ps: ps)
    ours = tcltorch.Adafactor(mk(ours_p), **(ours_kwargs or {}))
    ref = torch.optim.Adafactor(mk(ref_p), foreach=False, **(ref_kwargs or {}))
    for i in range(steps):
        edit(ours, i)
        edit(ref, i)
        g = grads_for(ours_p, seed=100 + i)
        set_grads(ours_p, g)
        set_grads(ref_p, g)
        ours.step()
        ref.step()
    return ours, ref, ours_p, ref_p


def test_lr_scheduler_takes_effect_at_the_next_step():
    scheds = {}

    def edit(opt, i):
        if i == 0:
            scheds[id(opt)] = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (1 + k))
        else:
            scheds[id(opt)].step()

    ours, ref, ours_p, ref_p = run_pair(edit, ours_kwargs={"lr": 0.05}, ref_kwargs={"lr": 0.05})
    assert ours.param_groups[0]["lr"] == ref.param_groups[0]["lr"] == pytest.approx(0.05 / 8)
    assert_close(ours_p, ref_p)


def test_param_group_edits_take_effect_at_the_next_step():
    def edit(opt, i):
        group = opt.param_groups[i % 2]
        if i == 2:
            group["lr"] = 0.2
        if i == 3:
            group["weight_decay"] = 0.1
        if i == 4:
            group["eps"] = (1e-20, 1e-2)  # a new tuple: both eps options
        if i == 5:
            group["maximize"] = True
        if i == 6:
            group["beta2_decay"] = -0.5
            group["d"] = 2.0

    def groups(ps):
        return [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.03}]

    _, _, ours_p, ref_p = run_pair(edit, groups=groups)
    assert_close(ours_p, ref_p)


def test_tensor_lr_filled_in_place_takes_effect():
    def edit(opt, i):
        if i == 0:
            opt.param_groups[0]["lr"] = torch.tensor(0.05)
        else:
            opt.param_groups[0]["lr"].fill_(0.05 / (i + 1))

    _, _, ours_p, ref_p = run_pair(edit)
    assert_close(ours_p, ref_p)


def test_beta1_turned_on_later_creates_its_momentum():
    ps = make_params()
    opt = tcltorch.Adafactor(ps)
    set_grads(ps, grads_for(ps, 1))
    opt.step()
    assert all("exp_avg" not in opt.state[p] for p in ps)
    opt.param_groups[0]["beta1"] = 0.9
    set_grads(ps, grads_for(ps, 2))
    opt.step()
    assert all(opt.state[p]["exp_avg"].shape == p.shape for p in ps)


def test_an_invalid_edit_fails_every_step_until_fixed():
    ps = make_params()
    opt = tcltorch.Adafactor(ps)
    set_grads(ps, grads_for(ps, 1))
    opt.step()
    opt.param_groups[0]["beta2_decay"] = 0.5
    for _ in range(2):
        with pytest.raises(ValueError, match="beta2_decay"):
            opt.step()
    opt.param_groups[0]["lr"] = "fast"
    with pytest.raises(TypeError, match="lr must be a number, got str"):
        opt.step()
    opt.param_groups[0]["lr"] = 0.01
    opt.param_groups[0]["beta2_decay"] = -0.8
    before = [p.clone() for p in ps]
    opt.step()
    assert all(not torch.equal(p, q) for p, q in zip(ps, before))
    del opt.param_groups[0]["weight_decay"]
    with pytest.raises(KeyError, match="weight_decay"):
        opt.step()


def test_load_state_dict_and_add_param_group_after_steps():
    # Groups replaced by load_state_dict, and a group added later, step with
    # their own values.
    ours_p, ref_p = make_params(), make_params()
    extra_ours, extra_ref = make_params(seed=7, shapes=[(5, 4)]), make_params(seed=7, shapes=[(5, 4)])
    ours = tcltorch.Adafactor(ours_p, lr=0.05)
    ref = torch.optim.Adafactor(ref_p, lr=0.05, foreach=False)
    for i in range(6):
        if i == 2:
            sd = ref.state_dict()
            sd["param_groups"][0]["lr"] = 0.02
            ref.load_state_dict(sd)
            ours_sd = ours.state_dict()
            ours_sd["param_groups"][0]["lr"] = 0.02
            ours.load_state_dict(ours_sd)
        if i == 3:
            ours.add_param_group({"params": extra_ours, "lr": 0.1})
            ref.add_param_group({"params": extra_ref, "lr": 0.1})
        g = grads_for(ours_p + extra_ours, seed=200 + i)
        set_grads(ours_p + extra_ours, g)
        set_grads(ref_p + extra_ref, g)
        ours.step()
        ref.step()
    assert_close(ours_p + extra_ours, ref_p + extra_ref)


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_a_copied_optimizer_steps(how):
    ps = make_params()
    opt = tcltorch.Adafactor(ps, lr=0.05)
    set_grads(ps, grads_for(ps, 1))
    opt.step()
    twin = pickle.loads(pickle.dumps(opt)) if how == "pickle" else copy.deepcopy(opt)
    twin_ps = twin.param_groups[0]["params"]
    set_grads(ps, grads_for(ps, 2))
    set_grads(twin_ps, grads_for(ps, 2))
    opt.step()
    twin.step()
    for a, b in zip(ps, twin_ps):
        assert torch.equal(a, b)


def test_step_hooks_fire_and_may_replace_arguments():
    ps = make_params(shapes=[(4, 3)])
    opt = tcltorch.Adafactor(ps)
    calls = []
    losses = []

    def pre(o, args, kwargs):
        calls.append("pre")
        # args is (optimizer, ...): replace the closure.
        return (o, lambda: losses.append(1.0) or torch.tensor(1.0)), {}

    handles = [opt.register_step_pre_hook(pre),
               opt.register_step_post_hook(lambda o, a, k: calls.append("post")),
               register_optimizer_step_pre_hook(lambda o, a, k: calls.append("global pre")),
               register_optimizer_step_post_hook(lambda o, a, k: calls.append("global post"))]
    try:
        ps[0].grad = torch.ones(4, 3)
        assert opt.step().item() == 1.0
        assert calls == ["global pre", "pre", "post", "global post"] and losses == [1.0]
    finally:
        for h in handles:
            h.remove()
    calls.clear()
    opt.step()
    assert calls == []


def test_profiler_sees_the_step_range():
    ps = make_params(shapes=[(4, 3)])
    opt = tcltorch.Adafactor(ps)
    ps[0].grad = torch.ones(4, 3)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    names = {e.name for e in prof.events()}
    assert "Optimizer.step#Adafactor.step" in names


def test_zero_grad_takes_the_profiler_range_only_when_profiling(monkeypatch):
    ps = make_params(shapes=[(4, 3), (3,)])
    opt = tcltorch.Adafactor(ps)
    ranges = []
    record_function = torch.autograd.profiler.record_function

    def counted(name, *args):
        ranges.append(name)
        return record_function(name, *args)

    monkeypatch.setattr(torch.autograd.profiler, "record_function", counted)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.zero_grad()
    assert all(p.grad is None for p in ps) and ranges == []
    for p in ps:
        p.grad = torch.ones_like(p)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.zero_grad()
    assert all(p.grad is None for p in ps)
    assert "Optimizer.zero_grad#Adafactor.zero_grad" in {e.name for e in prof.events()}
    # set_to_none=False is torch's as it is.
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.zero_grad(set_to_none=False)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in ps)


def test_a_subclass_step_keeps_the_hooks():
    class Counting(tcltorch.Adafactor):
        def step(self, closure=None):
            self.count = getattr(self, "count", 0) + 1
            return super().step(closure)

    ps = make_params(shapes=[(4, 3)])
    opt = Counting(ps)
    calls = []
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    ps[0].grad = torch.ones(4, 3)
    opt.step()
    assert opt.count == 1 and "post" in calls and len(opt.state[ps[0]]) > 0


def test_step_params_one_at_a_time_equals_step():
    # The entry of steps taken during backward: each parameter alone, in
    # another order, against torch.optim.Adafactor's step of them all.
    def groups(ps):
        return [{"params": ps[:2], "beta1": 0.9}, {"params": ps[2:], "lr": 0.03,
                                                     "weight_decay": 0.1}]

    ours_p, ref_p = make_params(), make_params()
    ours = tcltorch.Adafactor(groups(ours_p), beta1=None)
    ref = torch.optim.Adafactor(groups(ref_p), foreach=False)
    for i in range(5):
        g = grads_for(ours_p, 300 + i)
        set_grads(ours_p, g)
        set_grads(ref_p, g)
        if i == 3:
            ours.param_groups[1]["lr"] = ref.param_groups[1]["lr"] = 0.01
        for group in reversed(ours.param_groups):
            for p in reversed(group["params"]):
                ours._step_params(group, p)
        ref.step()
    # torch.optim.Adafactor has no beta1: the first group is checked below.
    assert_close(ours_p[2:], ref_p[2:])
    assert all("exp_avg" in ours.state[p] for p in ours_p[:2])


def test_step_params_with_a_list_equals_step_bit_for_bit():
    # Steps during backward must equal the usual step to the bit (and count
    # the updates skip_nan_updates skips the same).
    a, b = make_params(), make_params()
    opt_a = tcltorch.Adafactor(a, beta1=0.9, skip_nan_updates=True)
    opt_b = tcltorch.Adafactor(b, beta1=0.9, skip_nan_updates=True)
    for i in range(4):
        g = grads_for(a, 400 + i)
        if i == 1:
            g[0][0] = float("nan")
        set_grads(a, g)
        set_grads(b, g)
        opt_a.step()
        opt_b._step_params(opt_b.param_groups[0], list(b))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert opt_a.skipped_updates == opt_b.skipped_updates == 1


def test_state_tensors_replaced_between_steps_are_the_ones_stepped():
    ps = make_params(shapes=[(6, 9), (13,)])
    opt = tcltorch.Adafactor(ps)
    for i in range(2):
        set_grads(ps, grads_for(ps, 500 + i))
        opt.step()
    # A new tensor in a state dict, a new state dict, a deleted state.
    row = opt.state[ps[0]]["row_var"].clone()
    opt.state[ps[0]]["row_var"] = row
    before = row.clone()
    del opt.state[ps[1]]
    set_grads(ps, grads_for(ps, 600))
    opt.step()
    assert not torch.equal(row, before)
    assert opt.state[ps[0]]["step"].item() == 3
    assert opt.state[ps[1]]["step"].item() == 1  # made again, lazily


@pytest.mark.parametrize("grouped", [False, True])
def test_state_edits_after_steady_steps_take_effect(grouped):
    # From the third step on, a parameter whose state dict and optimizer.state
    # are unchanged is stepped without reading its dict again: every edit of
    # either must still be seen at the next step.
    def edit(opt, i):
        ps = [p for g in opt.param_groups for p in g["params"]]
        if i == 4:  # a new dict, same values
            opt.state[ps[0]] = {k: v.clone() for k, v in opt.state[ps[0]].items()}
        if i == 5:  # a new tensor under a key
            opt.state[ps[1]]["row_var"] = opt.state[ps[1]]["row_var"] * 2
        if i == 6:  # a state made again, lazily
            del opt.state[ps[2]]
        if i == 7:  # a state tensor changed in place
            opt.state[ps[1]]["col_var"].mul_(0.5)
        if i == 8:  # the parameters of a group in another order
            opt.param_groups[-1]["params"].reverse()
        if i == 9:
            opt.state[ps[0]]["step"] = opt.state[ps[0]]["step"] + 3

    def groups(ps):
        return [{"params": ps[:1]}, {"params": ps[1:]}] if grouped else ps

    ours, ref, ours_p, ref_p = run_pair(edit, steps=12, groups=groups)
    assert_close(ours_p, ref_p)
    for a, b in zip(ours_p, ref_p):
        for key, value in ref.state[b].items():
            assert rel_err(ours.state[a][key], value) <= 1e-6, key


def test_grads_replaced_or_kept_after_steady_steps():
    # The same gradient tensors at every step (as a benchmark keeps them), and
    # new ones after zero_grad(set_to_none=True); one parameter without a
    # gradient for a while.
    ours_p, ref_p = make_params(), make_params()
    ours = tcltorch.Adafactor(ours_p)
    ref = torch.optim.Adafactor(ref_p, foreach=False)
    fixed = grads_for(ours_p, seed=700)
    for i in range(10):
        for opt, ps in ((ours, ours_p), (ref, ref_p)):
            if i < 4:
                set_grads(ps, fixed) if i == 0 else None
            else:
                opt.zero_grad(set_to_none=True)
                set_grads(ps, grads_for(ps, seed=800 + i))
                if 5 <= i <= 6:
                    ps[1].grad = None
            opt.step()
        assert_close(ours_p, ref_p)
