"""tcltorch.Adafactor(variant="transformers") as a drop-in inside
transformers.Trainer, against transformers' own Adafactor in the same Trainer.

The model is a tiny Llama built from a config (random weights, no dropout),
trained on a small synthetic language-modelling set for a few steps on the CPU.
It has no biases: the key bias of an attention layer (GPT-2's, BERT's) has a
gradient that is 0 up to rounding, which Adafactor normalises to a step of full
size, so two float32 implementations part ways there after one step.
References are transformers' runs: Trainer's optim="adafactor", and
transformers' Adafactor(lr=None) with AdafactorSchedule, as its docs call it.
What is checked:

- the weights, losses and logged learning rates equal transformers' to float32
  rounding;
- a run resumed from one of our own Trainer checkpoints ends on the same bits
  as the run that was not interrupted;
- a Trainer checkpoint of optim="adafactor" resumes with our optimizer (its
  state dict is converted on load) and continues as transformers does.
"""
from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments  # noqa: E402
from transformers.optimization import Adafactor as HFAdafactor  # noqa: E402
from transformers.optimization import AdafactorSchedule  # noqa: E402

import tcltorch  # noqa: E402
from reference import rel_err  # noqa: E402

STEPS, SAVE_AT, BATCH, SEQ, VOCAB, LR = 6, 3, 4, 12, 50, 3e-3
# Float32 rounding: after 6 steps the weights differ by ~1e-7 relative (forward
# and backward see weights that differ in their last bits).
TOL = 1e-6


def _initial_weights() -> tuple[LlamaConfig, dict]:
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=SEQ)
    with torch.random.fork_rng():  # leaves the global generator to the other tests
        torch.manual_seed(1234)
        return config, LlamaForCausalLM(config).state_dict()


CONFIG, WEIGHTS = _initial_weights()


def make_model() -> LlamaForCausalLM:
    model = LlamaForCausalLM(CONFIG)
    model.load_state_dict(copy.deepcopy(WEIGHTS))
    return model


def make_dataset() -> list[dict]:
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(0, VOCAB, (STEPS * BATCH, SEQ), generator=gen)
    return [{"input_ids": row, "labels": row.clone()} for row in ids]


def training_args(out, **kw) -> TrainingArguments:
    base = dict(output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=BATCH,
                learning_rate=LR, weight_decay=0.01, save_strategy="steps",
                save_steps=SAVE_AT, logging_steps=1, report_to=[], use_cpu=True, seed=0,
                dataloader_num_workers=0, disable_tqdm=True)
    base.update(kw)
    return TrainingArguments(**base)


def ours_in_trainer_kwargs(args: TrainingArguments) -> dict:
    # What Trainer builds for optim="adafactor" (trainer_optimizer._get_adafactor),
    # with our class: its own lr, the weight-decay groups, fixed lr and no scaling.
    return {"optimizer_cls_and_kwargs": (
        tcltorch.Adafactor,
        dict(lr=args.learning_rate, variant="transformers", scale_parameter=False,
             relative_step=False))}


class Run:
    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        history = trainer.state.log_history
        self.losses = [e["loss"] for e in history if "loss" in e]
        self.lrs = [float(e["learning_rate"]) for e in history if "learning_rate" in e]


def train(out, resume=None, ours=True, optimizers=None, **kw) -> Run:
    """A Trainer run; `optimizers(model)` returns (optimizer, scheduler) for
    Trainer's `optimizers`, else Trainer builds optim="adafactor" (transformers'
    class, or ours with `ours`)."""
    args = training_args(out, **kw)
    model = make_model()
    if optimizers is not None:
        extra = {"optimizers": optimizers(model)}
    elif ours:
        extra = ours_in_trainer_kwargs(args)
    else:
        extra = {}
    trainer = Trainer(model=model, args=args, train_dataset=make_dataset(), **extra)
    trainer.train(resume_from_checkpoint=resume)
    return Run(trainer)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # A model this small runs its matmuls fastest on one thread (on a busy
    # machine, waiting for the others dominates); both sides run the same way.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Trainer runs with optim="adafactor", each made once for the module when a
    test first needs it."""
    root = tmp_path_factory.mktemp("trainer")
    made = {}

    def checkpoint(name):
        get(name)
        return str(root / name / f"checkpoint-{SAVE_AT}")

    recipes = {
        "hf": lambda: train(root / "hf", ours=False, optim="adafactor"),
        "ours": lambda: train(root / "ours", optim="adafactor"),
        "ours_resumed": lambda: train(root / "ours_resumed", resume=checkpoint("ours"),
                                      optim="adafactor"),
        "ours_from_hf": lambda: train(root / "ours_from_hf", resume=checkpoint("hf"),
                                      optim="adafactor"),
    }

    def get(name):
        if name not in made:
            made[name] = recipes[name]()
        return made[name]

    return get


def assert_weights_close(mine: dict, theirs: dict, tol: float = TOL) -> None:
    assert mine.keys() == theirs.keys()
    for name in theirs:
        assert rel_err(mine[name], theirs[name]) <= tol, name


def test_our_optimizer_is_what_trainer_runs(runs):
    trainer = runs("ours").trainer
    assert isinstance(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer")
                      else trainer.optimizer, tcltorch.Adafactor)


def test_matches_optim_adafactor(runs):
    ours, hf = runs("ours"), runs("hf")
    assert len(ours.losses) == len(hf.losses) == STEPS
    moved = max(rel_err(hf.weights[k], WEIGHTS[k]) for k in WEIGHTS)
    assert moved > 1e-3, "training did not move the weights"
    assert_weights_close(ours.weights, hf.weights)
    assert ours.losses == pytest.approx(hf.losses, rel=1e-5)
    assert ours.lrs == pytest.approx(hf.lrs, rel=1e-6)


def test_resumes_from_its_own_checkpoint_bit_for_bit(runs):
    straight, resumed = runs("ours"), runs("ours_resumed")
    assert resumed.trainer.state.global_step == STEPS
    for name, w in straight.weights.items():
        assert torch.equal(resumed.weights[name], w), name
    # The optimizer state too: it is what the next step would use.
    a = resumed.trainer.optimizer.state_dict()["state"]
    b = straight.trainer.optimizer.state_dict()["state"]
    assert a.keys() == b.keys()
    for index in b:
        assert a[index].keys() == b[index].keys()
        for key in b[index]:
            assert torch.equal(a[index][key], b[index][key]), (index, key)


def test_resumes_from_a_checkpoint_of_optim_adafactor(runs):
    # The checkpoint holds transformers' state dict (exp_avg_sq_row, int step,
    # RMS, decay_rate, ...): load_state_dict converts it.
    hf, resumed = runs("hf"), runs("ours_from_hf")
    optimizer = resumed.trainer.optimizer
    optimizer = getattr(optimizer, "optimizer", optimizer)
    assert isinstance(optimizer, tcltorch.Adafactor)
    assert all(g["variant"] == "transformers" for g in optimizer.param_groups)
    assert resumed.trainer.state.global_step == STEPS
    assert_weights_close(resumed.weights, hf.weights)
    assert resumed.losses[-(STEPS - SAVE_AT):] == pytest.approx(hf.losses[SAVE_AT:], rel=1e-5)


@pytest.mark.parametrize("warmup_init", [False, True])
def test_adafactor_schedule_with_lr_none(tmp_path, warmup_init):
    # transformers' documented call: Adafactor(params, lr=None, relative_step=True,
    # ...) with AdafactorSchedule, which reads the step size through _get_lr and
    # writes it into group["lr"] after every step (0 before the first one).
    kw = dict(lr=None, relative_step=True, scale_parameter=True, warmup_init=warmup_init)

    def hf_optimizers(model):
        opt = HFAdafactor(model.parameters(), **kw)
        return opt, AdafactorSchedule(opt)

    def our_optimizers(model):
        opt = tcltorch.Adafactor(model.parameters(), variant="transformers", **kw)
        return opt, AdafactorSchedule(opt)

    hf = train(tmp_path / "hf", optimizers=hf_optimizers, save_strategy="no")
    ours = train(tmp_path / "ours", optimizers=our_optimizers, save_strategy="no")
    moved = max(rel_err(hf.weights[k], WEIGHTS[k]) for k in WEIGHTS)
    assert moved > (1e-6 if warmup_init else 1e-3), "training did not move the weights"
    assert_weights_close(ours.weights, hf.weights)
    assert ours.losses == pytest.approx(hf.losses, rel=1e-5)
    # The logged learning rate is transformers' step size of the first parameter.
    assert len(ours.lrs) == STEPS and len(set(ours.lrs)) > 1
    assert ours.lrs == pytest.approx(hf.lrs, rel=1e-5)


def _params():
    return [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5))]


def test_lr_none_requires_relative_step():
    with pytest.raises(ValueError, match=r"lr=None .*relative_step=True"):
        tcltorch.Adafactor(_params(), lr=None, relative_step=False, variant="transformers")
    opt = tcltorch.Adafactor(_params(), lr=None, variant="transformers")
    with pytest.raises(ValueError, match=r"lr=None .*relative_step=True"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))],
                             "relative_step": False})


def test_adafactor_schedule_refuses_a_group_whose_lr_is_the_cap():
    # With an explicit lr the schedule's writes would change the step size
    # (0 before the first step): an error names the call that works.
    params = _params()
    opt = tcltorch.Adafactor(params, lr=1e-2, variant="transformers")
    sched = AdafactorSchedule(opt)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    with pytest.raises(RuntimeError, match="lr=None"):
        sched.step()


def test_a_state_dict_of_another_optimizer_is_refused_at_load():
    params = _params()
    adam = torch.optim.AdamW(params)
    for p in params:
        p.grad = torch.ones_like(p)
    adam.step()
    opt = tcltorch.Adafactor(params, variant="transformers")
    with pytest.raises(ValueError, match="from_transformers_state_dict"):
        opt.load_state_dict(adam.state_dict())


def test_a_state_dict_written_under_adafactor_schedule_loads_as_it_is():
    # transformers' lr=None groups hold what AdafactorSchedule last wrote (a
    # tensor); load_state_dict converts the dict, and the lr stays a report.
    gen = torch.Generator().manual_seed(3)
    theirs = [torch.nn.Parameter(torch.randn(6, 5, generator=gen, dtype=torch.float64)),
              torch.nn.Parameter(torch.randn(7, generator=gen, dtype=torch.float64))]
    grads = [[torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in theirs]
             for _ in range(10)]
    ref = HFAdafactor(theirs, lr=None, beta1=0.9, weight_decay=0.01)
    ref_schedule = AdafactorSchedule(ref)

    def step(opt, schedule, params, gs):
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
        schedule.step()

    for gs in grads[:5]:
        step(ref, ref_schedule, theirs, gs)
    assert ref.param_groups[0]["lr"] != 0
    mine = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    ours = tcltorch.Adafactor(mine, lr=None, variant="transformers")
    schedule = AdafactorSchedule(ours)
    ours.load_state_dict(ref.state_dict())
    assert ours.param_groups[0]["external_lr"] is False
    for gs in grads[5:]:
        step(ref, ref_schedule, theirs, gs)
        step(ours, schedule, mine, gs)
        assert schedule.get_last_lr()[0] == pytest.approx(float(ref_schedule.get_last_lr()[0]),
                                                          rel=1e-12)
    for a, b in zip(mine, theirs):
        assert rel_err(a, b) <= 1e-12
