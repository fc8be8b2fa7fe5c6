"""tcltorch.Adafactor(step_in_backward=True): each parameter stepped inside
backward. Checked bit for bit against the usual step of tcltorch.Adafactor, and
within tolerance against torch.optim.Adafactor and torch's
_apply_optimizer_in_backward with it."""
from __future__ import annotations

import copy
import gc
import pickle
import weakref

import pytest
import torch
from torch import nn

import tcltorch
from conftest import gradient_twice_message
from reference import rel_err


class Net(nn.Module):
    """Factored weights, unfactored biases and a scale, a 3-D parameter, and a
    matrix used twice in the graph."""

    def __init__(self, dtype=torch.float32, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.inp = nn.Linear(6, 10)
        self.shared = nn.Parameter(torch.randn(10, 10) / 3)
        self.mix = nn.Parameter(torch.randn(2, 5, 10) / 3)
        self.out = nn.Linear(10, 3)
        self.scale = nn.Parameter(torch.ones(3))
        self.to(dtype)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = torch.tanh(h @ self.shared)
        h = torch.tanh(h @ self.shared.T)  # the second use
        h = h + torch.einsum("bj,kij->bi", h, self.mix).repeat(1, 2)
        return self.out(h) * self.scale


def batches(n, dtype, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 6, generator=gen).to(dtype), torch.randn(8, 3, generator=gen).to(dtype))
            for _ in range(n)]


def train(model, opt, data, accumulate=1, scheduler=None, nan_at=None):
    """The same loop for both kinds of optimizer: backward per micro-batch,
    step() and zero_grad() after every `accumulate` of them."""
    for i, (x, y) in enumerate(data):
        loss = nn.functional.mse_loss(model(x).float(), y.float())
        if nan_at == i:
            loss = loss + model.scale.sum() * float("nan")
        loss.backward()
        if (i + 1) % accumulate == 0:
            opt.step()
            opt.zero_grad()
            if scheduler is not None:
                scheduler.step()


def assert_same_bits(a: nn.Module, b: nn.Module):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


def pair(dtype=torch.float32, accumulate_steps=1, **kwargs):
    usual, inb = Net(dtype), Net(dtype)
    return (usual, tcltorch.Adafactor(usual.parameters(), **kwargs),
            inb, tcltorch.Adafactor(inb.parameters(), step_in_backward=True,
                                    accumulate_steps=accumulate_steps, **kwargs))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("kwargs", [
    {"lr": 0.02},
    {"lr": 0.02, "beta1": 0.9, "weight_decay": 0.1},
    {"lr": 0.02, "beta1": 0.9, "min_dim_size_to_factor": 1000},  # all unfactored
])
def test_equals_the_usual_step_bit_for_bit(dtype, kwargs):
    usual, opt_u, inb, opt_b = pair(dtype, **kwargs)
    data = batches(6, dtype)
    train(usual, opt_u, data)
    train(inb, opt_b, data)
    assert_same_bits(usual, inb)
    assert all(len(opt_b.state[p]) > 0 for p in inb.parameters())
    for p, q in zip(usual.parameters(), inb.parameters()):
        for key, value in opt_u.state[p].items():
            assert torch.equal(value, opt_b.state[q][key]), key


def test_factored_and_unfactored_state():
    _, _, inb, opt = pair()
    train(inb, opt, batches(1, torch.float32))
    assert set(opt.state[inb.shared]) == {"step", "row_var", "col_var"}
    assert set(opt.state[inb.scale]) == {"step", "variance"}


def test_gradients_are_none_after_backward():
    _, _, inb, opt = pair()
    x, y = batches(1, torch.float32)[0]
    before = [p.detach().clone() for p in inb.parameters()]
    nn.functional.mse_loss(inb(x), y).backward()
    assert all(p.grad is None for p in inb.parameters())
    # ... and the parameters have moved, before step() is called.
    assert all(not torch.equal(p, b) for p, b in zip(inb.parameters(), before))
    assert opt.step() is None
    opt.zero_grad()


def test_backward_holds_about_one_large_gradient_at_a_time():
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(512, 512) for _ in range(6)])  # 1 MiB weights
    opt = tcltorch.Adafactor(model.parameters(), step_in_backward=True)
    params = list(model.parameters())
    live = []

    def count(_):  # registered after the optimizer's hooks: runs after them
        live.append(sum(q.grad.numel() * q.grad.element_size()
                        for q in params if q.grad is not None))

    for p in params:
        p.register_post_accumulate_grad_hook(count)
    model(torch.randn(4, 512)).square().mean().backward()
    largest = max(p.numel() * p.element_size() for p in params)
    total = sum(p.numel() * p.element_size() for p in params)
    # The usual step would hold all of them; here at most the batch of
    # waiting small gradients (max(1 MiB, largest / 8)) and one more.
    assert max(live) <= (1 << 20) + largest < total / 2
    assert int(opt.state[params[0]]["step"]) == 1


def test_step_runs_the_closure_only():
    _, _, inb, opt = pair()
    x, y = batches(1, torch.float32)[0]

    def closure():
        loss = nn.functional.mse_loss(inb(x), y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor)
    assert int(opt.state[inb.shared]["step"]) == 1
    opt.step()  # no gradients: nothing moves, nothing counts
    assert int(opt.state[inb.shared]["step"]) == 1


def test_lr_scheduler_and_param_groups_edits():
    usual, opt_u, inb, opt_b = pair(lr=0.05, beta1=0.9)
    sched_u = torch.optim.lr_scheduler.StepLR(opt_u, step_size=2, gamma=0.5)
    sched_b = torch.optim.lr_scheduler.StepLR(opt_b, step_size=2, gamma=0.5)
    data = batches(6, torch.float32)
    train(usual, opt_u, data[:3], scheduler=sched_u)
    train(inb, opt_b, data[:3], scheduler=sched_b)
    for opt in (opt_u, opt_b):
        opt.param_groups[0]["weight_decay"] = 0.2
    train(usual, opt_u, data[3:], scheduler=sched_u)
    train(inb, opt_b, data[3:], scheduler=sched_b)
    assert opt_b.param_groups[0]["lr"] == opt_u.param_groups[0]["lr"] == 0.05 * 0.5 ** 3
    assert_same_bits(usual, inb)


@pytest.mark.parametrize("n", [2, 3])
def test_accumulate_steps_equals_accumulated_micro_batches(n):
    usual, opt_u, inb, opt_b = pair(lr=0.02, beta1=0.9, accumulate_steps=n)
    data = batches(3 * n, torch.float32)
    train(usual, opt_u, data, accumulate=n)
    for i, (x, y) in enumerate(data):
        nn.functional.mse_loss(inb(x), y).backward()
        stepped = (i + 1) % n == 0
        assert all((p.grad is None) == stepped for p in inb.parameters())
        opt_b.zero_grad()  # harmless: the accumulating gradients stay
    assert_same_bits(usual, inb)


def test_accumulate_steps_with_a_parameter_unused_in_the_last_micro_batch():
    # The usual step updates every parameter that holds a gradient; so does
    # the end of the N-th pass for one that got none in it.
    usual, opt_u, inb, opt_b = pair(lr=0.02, accumulate_steps=2)
    data = batches(4, torch.float32)
    for model, opt in ((usual, opt_u), (inb, opt_b)):
        for i, (x, y) in enumerate(data):
            out = model(x)
            if i % 2 == 1:
                out = out / model.scale.detach()  # scale gets no gradient here
            nn.functional.mse_loss(out, y).backward()
            if i % 2 == 1:
                opt.step()
                opt.zero_grad()
    assert all(p.grad is None for p in inb.parameters())
    assert_same_bits(usual, inb)


def checkpointed(model, x, use_reentrant):
    from torch.utils.checkpoint import checkpoint

    def middle(h):
        h = torch.tanh(h @ model.shared)
        return torch.tanh(h @ model.shared.T)

    h = torch.tanh(model.inp(x))
    h = checkpoint(middle, h, use_reentrant=use_reentrant)
    return model.out(h) * model.scale


@pytest.mark.parametrize("use_reentrant, n", [(True, 1), (False, 1), (False, 2)])
def test_activation_checkpointing(use_reentrant, n):
    usual, opt_u, inb, opt_b = pair(lr=0.02, accumulate_steps=n)
    for model, opt in ((usual, opt_u), (inb, opt_b)):
        for i, (x, y) in enumerate(batches(4, torch.float32)):
            nn.functional.mse_loss(checkpointed(model, x, use_reentrant), y).backward()
            if (i + 1) % n == 0:
                opt.step()
                opt.zero_grad()
    assert all(p.grad is None for p in inb.parameters())
    assert_same_bits(usual, inb)


def test_accumulate_steps_refuses_a_reentrant_backward():
    # A backward inside the backward would count as a micro-batch of its own.
    _, _, inb, _opt = pair(accumulate_steps=2)
    x, y = batches(1, torch.float32)[0]
    with pytest.raises(RuntimeError, match="use_reentrant=False"):
        nn.functional.mse_loss(checkpointed(inb, x, True), y).backward()


def tied_checkpointed(model, x, where, use_reentrant=True, detach=None):
    """`shared` used inside a checkpoint and outside it, `where` ("before" or
    "after" the checkpoint), as a tied embedding is; `detach` ("inside" or
    "outside") cuts the gradient of one use, for a reference (without a
    reentrant backward)."""
    from torch.utils.checkpoint import checkpoint

    inside = model.shared.detach() if detach == "inside" else model.shared
    outside = model.shared.detach() if detach == "outside" else model.shared
    h = torch.tanh(model.inp(x))
    if where == "before":  # an embedding, whose backward does not need the weight
        h = h + nn.functional.embedding(torch.arange(8) % 10, outside)
    h = checkpoint(lambda h: torch.tanh(h @ inside.T), h,
                   use_reentrant=use_reentrant and detach is None)
    if where == "after":
        h = torch.tanh(h @ outside)
    return model.out(h) * model.scale


TWICE = gradient_twice_message(1, "[10, 10]")


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_parameter_inside_and_outside_a_reentrant_checkpoint_is_refused(where):
    _, _, inb, opt = pair(lr=0.02)
    x, y = batches(1, torch.float32)[0]
    with pytest.raises(RuntimeError) as info:
        nn.functional.mse_loss(tied_checkpointed(inb, x, where), y).backward()
    assert str(info.value) == TWICE
    # Refused before a second step.
    assert int(opt.state.get(inb.shared, {}).get("step", 0)) <= 1


def test_after_the_refusal_the_state_is_one_step_with_the_first_part():
    """Used before the checkpoint, `shared` gets the inner part of its gradient
    first: stepped with it, the outer part refused and left in .grad; the
    parameters reached before (out, scale) were stepped as usual, inp (after)
    not. Then training goes on as the usual step: without a reentrant
    backward, a parameter inside and outside a checkpoint is fine."""
    usual, opt_u, inb, opt_b = pair(lr=0.02)
    data = batches(3, torch.float32)
    x, y = data[0]
    with pytest.raises(RuntimeError, match="got a gradient a second time"):
        nn.functional.mse_loss(tied_checkpointed(inb, x, "before"), y).backward()
    nn.functional.mse_loss(tied_checkpointed(usual, x, "before", detach="inside"), y).backward()
    assert torch.equal(inb.shared.grad, usual.shared.grad)  # the outer part
    opt_u.zero_grad()
    nn.functional.mse_loss(tied_checkpointed(usual, x, "before", detach="outside"), y).backward()
    usual.inp.weight.grad = usual.inp.bias.grad = None
    opt_u.step()
    opt_u.zero_grad()
    assert_same_bits(usual, inb)
    assert inb.inp.weight.grad is None and inb.out.weight.grad is None
    for p in inb.parameters():  # zero_grad() leaves gradients that accumulate
        p.grad = None
    for model, opt in ((usual, opt_u), (inb, opt_b)):
        for x, y in data[1:]:
            nn.functional.mse_loss(tied_checkpointed(model, x, "before", False), y).backward()
            opt.step()
            opt.zero_grad()
    assert_same_bits(usual, inb)


def test_skip_nan_updates_counted():
    usual, opt_u, inb, opt_b = pair(lr=0.02, skip_nan_updates=True)
    data = batches(4, torch.float32)
    train(usual, opt_u, data, nan_at=2)
    train(inb, opt_b, data, nan_at=2)
    assert opt_u.skipped_updates > 0
    assert opt_b.skipped_updates == opt_u.skipped_updates
    assert_same_bits(usual, inb)


def test_state_dict_save_and_load_mid_run_continue_bit_for_bit(tmp_path):
    usual, opt_u, inb, opt_b = pair(lr=0.02, beta1=0.9)
    data = batches(6, torch.float32)
    train(usual, opt_u, data)
    train(inb, opt_b, data[:3])
    torch.save({"model": inb.state_dict(), "opt": opt_b.state_dict()}, tmp_path / "ckpt.pt")
    del inb, opt_b
    ckpt = torch.load(tmp_path / "ckpt.pt")
    resumed = Net()
    resumed.load_state_dict(ckpt["model"])
    opt_r = tcltorch.Adafactor(resumed.parameters(), lr=0.5, step_in_backward=True)
    opt_r.load_state_dict(ckpt["opt"])
    assert opt_r.step_in_backward  # not a group key: the state dict leaves it alone
    train(resumed, opt_r, data[3:])
    assert_same_bits(usual, resumed)


def test_a_state_dict_does_not_switch_the_usual_step():
    _, _, inb, opt_b = pair(lr=0.02)
    train(inb, opt_b, batches(1, torch.float32))
    usual = Net()
    opt_u = tcltorch.Adafactor(usual.parameters(), lr=0.02)
    opt_u.load_state_dict(opt_b.state_dict())
    assert not opt_u.step_in_backward and "step_in_backward" not in opt_u.param_groups[0]


@pytest.mark.parametrize("clone", [lambda o: pickle.loads(pickle.dumps(o)), copy.deepcopy],
                         ids=["pickle", "deepcopy"])
def test_pickled_or_copied_with_its_model_keeps_stepping_in_backward(clone):
    usual, opt_u, inb, opt_b = pair(lr=0.02, beta1=0.9)
    data = batches(4, torch.float32)
    train(usual, opt_u, data)
    train(inb, opt_b, data[:2])
    model, opt = clone((inb, opt_b))
    assert opt.step_in_backward
    train(model, opt, data[2:])
    assert all(p.grad is None for p in model.parameters())
    assert_same_bits(usual, model)
    # The original's hooks still step the original only.
    train(inb, opt_b, data[2:])
    assert_same_bits(usual, inb)


def test_optimizer_hooks_keep_working():
    _, _, inb, opt = pair(lr=0.02)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    opt.register_state_dict_pre_hook(lambda o: calls.append("state_dict"))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("loaded"))
    train(inb, opt, batches(2, torch.float32))
    assert calls == ["pre", "post", "pre", "post"]
    opt.load_state_dict(opt.state_dict())
    assert calls[4:] == ["state_dict", "loaded"]
    assert opt.step_in_backward


def test_add_param_group_hooks_the_new_parameters():
    usual, opt_u, inb, opt_b = pair(lr=0.02)
    extra_u, extra_b = (nn.Parameter(torch.ones(3)) for _ in range(2))
    opt_u.add_param_group({"params": [extra_u], "lr": 0.1})
    opt_b.add_param_group({"params": [extra_b], "lr": 0.1})
    for model, extra, opt in ((usual, extra_u, opt_u), (inb, extra_b, opt_b)):
        for x, y in batches(3, torch.float32):
            nn.functional.mse_loss(model(x) * extra, y).backward()
            opt.step()
            opt.zero_grad()
    assert extra_b.grad is None and torch.equal(extra_u, extra_b)
    assert_same_bits(usual, inb)


def test_remove_step_in_backward_returns_to_the_usual_step():
    usual, opt_u, inb, opt_b = pair(lr=0.02)
    data = batches(4, torch.float32)
    train(usual, opt_u, data)
    train(inb, opt_b, data[:2])
    opt_b.remove_step_in_backward()
    assert not opt_b.step_in_backward
    assert not any(p._post_accumulate_grad_hooks for p in inb.parameters())
    assert not any(hasattr(p, "_in_backward_optimizers") for p in inb.parameters())
    from torch.distributed.optim import apply_optimizer_in_backward as torch_in_backward

    assert not any(torch_in_backward.param_to_optim_hook_handle_map.get(p)
                   for p in inb.parameters())
    train(inb, opt_b, data[2:])
    assert_same_bits(usual, inb)


def test_a_second_optimizer_in_backward_on_a_parameter_is_refused():
    _, _, inb, opt = pair()
    with pytest.raises(ValueError, match="already stepped in backward by another"):
        tcltorch.Adafactor(inb.parameters(), step_in_backward=True)
    opt.remove_step_in_backward()
    tcltorch.Adafactor(inb.parameters(), step_in_backward=True)


def test_a_collected_optimizer_leaves_no_hook():
    model = Net()
    opt = tcltorch.Adafactor(model.parameters(), step_in_backward=True)
    ref = weakref.ref(opt)
    del opt
    gc.collect()
    assert ref() is None
    assert not any(p._post_accumulate_grad_hooks for p in model.parameters())
    x, y = batches(1, torch.float32)[0]
    nn.functional.mse_loss(model(x), y).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_matches_torch_adafactor_and_torchs_optimizer_in_backward():
    from torch.distributed.optim import _apply_optimizer_in_backward

    kwargs = {"lr": 0.02, "weight_decay": 0.1}
    ours, ref_usual, ref_inb = Net(torch.float64), Net(torch.float64), Net(torch.float64)
    opt = tcltorch.Adafactor(ours.parameters(), step_in_backward=True, **kwargs)
    opt_ref = torch.optim.Adafactor(ref_usual.parameters(), **kwargs)
    _apply_optimizer_in_backward(torch.optim.Adafactor, ref_inb.parameters(), kwargs)
    data = batches(6, torch.float64)
    for model, o in ((ours, opt), (ref_usual, opt_ref), (ref_inb, None)):
        for x, y in data:
            nn.functional.mse_loss(model(x), y).backward()
            if o is not None:
                o.step()
                o.zero_grad()
    for p, q, r in zip(ours.parameters(), ref_usual.parameters(), ref_inb.parameters()):
        assert p.grad is None and r.grad is None
        assert rel_err(p, q) <= 1e-12
        assert rel_err(p, r) <= 1e-12


@pytest.mark.parametrize("kwargs, error, text", [
    ({"accumulate_steps": 0}, ValueError, "accumulate_steps must be an integer >= 1 (the number "
     "of backward passes whose gradients one step uses), got 0"),
    ({"accumulate_steps": 1.5}, TypeError, "got 1.5 (float)"),
    ({"accumulate_steps": "2"}, TypeError, "got '2' (str)"),
    ({"accumulate_steps": True}, TypeError, "got True (bool)"),
    ({"step_in_backward": "yes"}, TypeError, "step_in_backward must be True or False"),
    ({"step_in_backward": False, "accumulate_steps": 2}, ValueError,
     "accumulate_steps=2 requires step_in_backward=True"),
])
def test_bad_values_are_refused(kwargs, error, text):
    kwargs.setdefault("step_in_backward", True)
    with pytest.raises(error) as info:
        tcltorch.Adafactor(Net().parameters(), **kwargs)
    assert text in str(info.value)


def test_signature_shows_the_keywords():
    import inspect

    sig = inspect.signature(tcltorch.Adafactor.__init__)
    assert sig.parameters["step_in_backward"].default is False
    assert sig.parameters["accumulate_steps"].default == 1
