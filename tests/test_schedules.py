"""Learning-rate schedules and optimiser options (pipelines/train/schedules.py,
pipelines/train/param_groups.py): each per-epoch schedule's lr against hand-computed values and the
per-step cosine against timm's formula, through the scheduler the worker drives; a resumed run
continuing the schedule exactly; weight decay groups and layer-wise lr decay."""
from __future__ import annotations

import math
import shutil
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from pipelines.config import TrainConfig, config_from_dict
from pipelines.train.loop import build_optimizer, build_scheduler, current_lr
from pipelines.train.schedules import after_epoch, before_step, lr_sequence
from pipelines.train.tasks import steps_per_epoch
from preprocessing.schema import ConfigError
from tests.helpers import TINY_MPSTR, synthetic_cfg


def _stepped(tc: TrainConfig, epochs: int, model=None, opt=None, sched=None) -> list[float]:
    """lr of each epoch as the worker sees it: record, then step after the epoch."""
    model = model or torch.nn.Linear(2, 2)
    opt = opt or build_optimizer(model, tc)
    sched = sched or build_scheduler(opt, tc)
    out = []
    for _ in range(epochs):
        out.append(current_lr(opt))
        opt.step()
        sched.step()
    return out


# Hand-computed per-epoch learning rates (epoch 1 first).
FUSIONFORMER = TrainConfig(optimizer="adam", amsgrad=True, lr=1e-3, lr_schedule="exponential_step",
                           lr_decay=0.95, lr_step_every=5, lr_step_factor=0.5, epochs=12, weight_decay=0.0)
# Fusionformer run.py: after epochs 5, 10, ... x0.5 INSTEAD of x0.95 (if/else in the code).
FUSIONFORMER_LR = [1e-3, 9.5e-4, 9.025e-4, 8.57375e-4, 8.1450625e-4,
                   # after epoch 5: x0.5 -> 1e-3 * 0.95**4 * 0.5
                   4.07253125e-4, 3.8689046875e-4, 3.675459453125e-4, 3.49168648046875e-4,
                   3.3171021564453125e-4,
                   # after epoch 10: x0.5 again -> 1e-3 * 0.95**8 * 0.25
                   1.6585510782226562e-4, 1.5756235243115234e-4]
STEP = TrainConfig(lr=0.1, lr_schedule="step", lr_step_every=3, lr_step_factor=0.1, epochs=7)
STEP_LR = [0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001]
EXPONENTIAL = TrainConfig(lr=4e-5, lr_decay=0.99, epochs=4)
EXPONENTIAL_LR = [4e-5, 3.96e-5, 3.9204e-5, 3.881196e-5]

@pytest.mark.parametrize("tc, expected", [
    (FUSIONFORMER, FUSIONFORMER_LR), (STEP, STEP_LR), (EXPONENTIAL, EXPONENTIAL_LR),
], ids=["exponential_step", "step", "exponential"])
def test_schedule_matches_hand_computed_lr(tc, expected):
    tc.validate()
    assert lr_sequence(tc) == pytest.approx(expected, rel=1e-8)
    assert _stepped(tc, tc.epochs) == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("tc", [FUSIONFORMER, STEP, EXPONENTIAL], ids=["exponential_step", "step", "exponential"])
def test_resumed_run_continues_the_schedule_exactly(tc, tmp_path):
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, tc)
    sched = build_scheduler(opt, tc)
    first = _stepped(tc, 4, model, opt, sched)
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp_path / "state.pt")
    rest = _stepped(tc, tc.epochs - 4, model, opt, sched)

    state = torch.load(tmp_path / "state.pt", weights_only=True)
    fresh = torch.nn.Linear(2, 2)
    fopt = build_optimizer(fresh, tc)
    fsched = build_scheduler(fopt, tc)
    fopt.load_state_dict(state["optimizer"])
    fsched.load_state_dict(state["scheduler"])
    assert _stepped(tc, tc.epochs - 4, fresh, fopt, fsched) == rest
    assert first + rest == pytest.approx(lr_sequence(tc), rel=1e-8)


# ----------------------------------------------------------------------------- per-step cosine
# 2 warm-up epochs of 5 steps, then cosine over the remaining 4 epochs (20 steps).
COSINE = TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05, lr_schedule="cosine_warmup",
                     warmup_epochs=2, epochs=6, warmup_lr=1e-6, min_lr=1e-7)
STEPS = 5


def _timm_cosine(t: int, tc: TrainConfig, steps: int) -> float:
    """timm's CosineLRScheduler (warmup_prefix, one cycle) at step t, written out."""
    warm, span = tc.warmup_epochs * steps, (tc.epochs - tc.warmup_epochs) * steps
    if t < warm:
        return tc.warmup_lr + t * (tc.lr - tc.warmup_lr) / warm
    return tc.min_lr + 0.5 * (tc.lr - tc.min_lr) * (1 + math.cos(math.pi * (t - warm) / span))


def _run_steps(tc: TrainConfig, model: nn.Module, opt, sched, epochs: range, steps: int) -> list[float]:
    """lr of each optimiser step as the worker drives the schedule (real AdamW steps)."""
    out = []
    for epoch in epochs:  # 1-based, as the worker counts
        for index in range(steps):
            before_step(sched, tc, (epoch - 1) * steps + index)
            out.append(current_lr(opt))
            model(torch.ones(1, 2)).sum().backward()
            opt.step()
            opt.zero_grad()
        after_epoch(sched, tc)
    return out


def test_cosine_warmup_follows_timms_formula_every_step():
    COSINE.validate()
    lrs = lr_sequence(COSINE, STEPS)
    assert len(lrs) == COSINE.epochs * STEPS
    warm, last = COSINE.warmup_epochs * STEPS, COSINE.epochs * STEPS - 1
    middle = warm + (last + 1 - warm) // 2
    # The authors update after each step, so step t trains at the schedule's lr of t - 1.
    assert lrs[0] == lrs[1] == pytest.approx(1e-6, rel=1e-12)  # warmup_lr
    assert lrs[warm] == pytest.approx(1e-6 + (warm - 1) * (1e-3 - 1e-6) / warm, rel=1e-12)
    assert lrs[warm + 1] == pytest.approx(1e-3, rel=1e-12)  # the end of the warm-up: the peak
    assert lrs[middle + 1] == pytest.approx((1e-3 + 1e-7) / 2, rel=1e-12)  # cos(pi / 2) = 0
    assert lrs[last] == pytest.approx(_timm_cosine(last - 1, COSINE, STEPS), rel=1e-12)
    assert lrs == pytest.approx([_timm_cosine(max(t - 1, 0), COSINE, STEPS) for t in range(last + 1)], rel=1e-12)
    assert len(set(lrs[3 * STEPS:4 * STEPS])) == STEPS  # the lr changes within an epoch
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, COSINE)
    assert _run_steps(COSINE, model, opt, build_scheduler(opt, COSINE, STEPS), range(1, 7), STEPS) == lrs


def test_cosine_warmup_defaults_are_the_authors_ratios():
    tc = TrainConfig(lr=2e-4, lr_schedule="cosine_warmup", warmup_epochs=1, epochs=3)
    tc.validate()
    assert tc.cosine_lrs() == pytest.approx((2e-7, 2e-8))  # 5e-7 / 5e-4 and 5e-8 / 5e-4
    assert lr_sequence(tc, 4)[0] == pytest.approx(2e-7)
    with pytest.raises(ValueError, match="needs steps_per_epoch >= 1"):
        build_scheduler(build_optimizer(nn.Linear(2, 2), tc), tc)


def test_cosine_warmup_resumes_mid_run_at_the_same_lr_each_step(tmp_path):
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, COSINE)
    sched = build_scheduler(opt, COSINE, STEPS)
    first = _run_steps(COSINE, model, opt, sched, range(1, 4), STEPS)  # 3 epochs, into the cosine
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp_path / "state.pt")
    rest = _run_steps(COSINE, model, opt, sched, range(4, 7), STEPS)

    state = torch.load(tmp_path / "state.pt", weights_only=True)  # as checkpoints are read
    fresh = nn.Linear(2, 2)
    fopt = build_optimizer(fresh, COSINE)
    fsched = build_scheduler(fopt, COSINE, STEPS)
    fopt.load_state_dict(state["optimizer"])
    fsched.load_state_dict(state["scheduler"])
    assert _run_steps(COSINE, fresh, fopt, fsched, range(4, 7), STEPS) == rest
    assert first + rest == lr_sequence(COSINE, STEPS)


def test_driver_run_resumed_after_a_lost_epoch_trains_it_at_the_same_lrs(tmp_path, ray_local):
    """The worker end to end: a run whose last checkpoint is lost redoes that epoch at the lrs of
    the uninterrupted run (the epoch's last lr is recorded) and the same losses."""
    from pipelines.train.checkpoints import checkpoint_name
    from pipelines.train.driver import run_training
    from pipelines.train.logs import read_csv

    cfg = dict(lr_schedule="cosine_warmup", warmup_epochs=1, epochs=3, keep_best=3)
    whole = run_training(synthetic_cfg(tmp_path, **cfg), progress=lambda _: None).history
    run = tmp_path / "runs" / "tiny"
    shutil.rmtree(run / checkpoint_name(3))
    resumed = run_training(synthetic_cfg(tmp_path, **cfg), progress=lambda _: None).history
    assert [h["lr"] for h in resumed] == [h["lr"] for h in whole]
    assert len({h["lr"] for h in whole}) == 3 and [r["epoch"] for r in read_csv(str(run))] == [1, 2, 3]
    assert resumed[2]["loss"] == pytest.approx(whole[2]["loss"], rel=1e-6)


def test_steps_per_epoch_is_a_full_worker_share_in_batches():
    dataset = SimpleNamespace(windows_in=lambda split: 103)
    assert steps_per_epoch(dataset, TrainConfig(batch_size=4), 9, 2) == 13  # ceil(ceil(103 / 2) / 4)
    assert steps_per_epoch(dataset, TrainConfig(batch_size=4, max_windows_per_epoch=40), 9, 2) == 5
    assert steps_per_epoch(dataset, TrainConfig(batch_frames=27), 9, 1) == 35  # 3 windows per step


# ----------------------------------------------------------------------------- parameter groups
class _Mixed(nn.Module):
    """Parameters of every kind set_weight_decay tells apart."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.conv = nn.Conv2d(1, 2, 3)
        self.table = nn.Parameter(torch.zeros(3, 4))  # 2-D, decayed
        self.scale = nn.Parameter(torch.ones(4))  # 1-D, not decayed
        self.attn = nn.Module()
        self.attn.bias = nn.Parameter(torch.zeros(2, 2))  # 2-D but named *.bias: not decayed
        self.frozen = nn.Linear(2, 2).requires_grad_(False)


def test_decay_groups_skip_1d_and_bias_as_the_authors_set_weight_decay():
    model = _Mixed()
    tc = TrainConfig(weight_decay=0.05, decay_groups="skip_1d_and_bias")
    opt = build_optimizer(model, tc)
    # WUJINHUAN/3D-human-pose utils/optimizer.py: len(shape) == 1 or name.endswith(".bias")
    no_decay = {n for n, p in model.named_parameters() if p.requires_grad and (p.ndim == 1 or n.endswith(".bias"))}
    decay = {n for n, p in model.named_parameters() if p.requires_grad} - no_decay
    assert no_decay == {"fc.bias", "norm.weight", "norm.bias", "conv.bias", "scale", "attn.bias"}
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in opt.param_groups}
    assert groups == {0.0: no_decay, 0.05: decay} and len(opt.param_groups) == 2
    one = build_optimizer(model, TrainConfig(weight_decay=0.05)).param_groups  # the default: one group
    assert len(one) == 1 and one[0]["weight_decay"] == 0.05 and len(one[0]["params"]) == len(no_decay | decay)


def _tiny_mpstr() -> nn.Module:
    from models.registry import build_model, parse_model_config

    torch.manual_seed(0)
    return build_model(parse_model_config(dict(TINY_MPSTR), "model"), frames=2, joints=17)


def test_layer_decay_scales_mpstrs_swin_layers():
    from models.timm_loader import import_timm

    import_timm()
    from timm.models import group_parameters

    model = _tiny_mpstr()
    swin = model.backbone
    layers = len(set(group_parameters(swin, swin.group_matcher(coarse=False), reverse=True).values())) + 1  # + head
    tc = TrainConfig(lr=1e-3, weight_decay=0.05, layer_decay=0.75, decay_groups="skip_1d_and_bias",
                     lr_schedule="exponential", lr_decay=0.5)
    opt = build_optimizer(model, tc)
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    stem = group_of[id(swin.patch_embed.proj.weight)]
    head = group_of[id(next(model.head.parameters()))]
    assert stem["lr"] == pytest.approx(1e-3 * 0.75 ** (layers - 1), rel=1e-12)  # layer 0
    assert head["lr"] == pytest.approx(1e-3, rel=1e-12)  # the last layer: scale 0.75 ** 0
    assert group_of[id(swin.patch_embed.proj.bias)]["weight_decay"] == 0.0 and stem["weight_decay"] == 0.05
    assert current_lr(opt) == pytest.approx(1e-3)  # the scheduled lr, before a group's scale
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    sched = build_scheduler(opt, tc)  # a per-epoch schedule scales each group's lr
    opt.step()
    sched.step()
    assert stem["lr"] == pytest.approx(0.5e-3 * 0.75 ** (layers - 1), rel=1e-12) and head["lr"] == pytest.approx(0.5e-3)
    cosine = TrainConfig(lr=1e-3, layer_decay=0.75, lr_schedule="cosine_warmup", warmup_epochs=1, epochs=3)
    opt = build_optimizer(model, cosine)
    sched = build_scheduler(opt, cosine, 4)  # timm's scheduler: every value times the group's scale
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    for t in (0, 2, 7):
        before_step(sched, cosine, t)
        assert group_of[id(swin.patch_embed.proj.weight)]["lr"] == pytest.approx(
            lr_sequence(cosine, 4)[t] * 0.75 ** (layers - 1), rel=1e-12)
        assert group_of[id(next(model.head.parameters()))]["lr"] == pytest.approx(lr_sequence(cosine, 4)[t], rel=1e-12)


def test_layer_decay_needs_a_model_with_layer_groups():
    with pytest.raises(ConfigError, match=r"train.layer_decay needs .*Linear has no group_matcher"):
        build_optimizer(nn.Linear(2, 2), TrainConfig(layer_decay=0.75))

def test_optimizer_options_reach_torch():
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, FUSIONFORMER)
    assert type(opt) is torch.optim.Adam and opt.param_groups[0]["amsgrad"] is True
    opt = build_optimizer(model, COSINE)
    group = opt.param_groups[0]
    assert type(opt) is torch.optim.AdamW and group["weight_decay"] == 0.05 and group["amsgrad"] is False


def test_schedule_keys_are_validated():
    base = {"model": {"name": "mixste"}}
    cfg = config_from_dict({**base, "train": {"lr_schedule": "exponential_step", "lr_step_every": 5,
                                              "lr_step_factor": 0.5, "amsgrad": True}})
    assert (cfg.train.lr_schedule, cfg.train.lr_step_every, cfg.train.amsgrad) == ("exponential_step", 5, True)
    with pytest.raises(ConfigError, match="lr_schedule"):
        config_from_dict({**base, "train": {"lr_schedule": "linear"}})
    with pytest.raises(ConfigError, match="lr_step_every must be >= 1, got 0"):
        config_from_dict({**base, "train": {"lr_step_every": 0}})
    with pytest.raises(ConfigError, match=r"warmup_epochs \(10\) must be < train.epochs \(10\)"):
        config_from_dict({**base, "train": {"lr_schedule": "cosine_warmup", "warmup_epochs": 10, "epochs": 10}})
    cosine = {"lr_schedule": "cosine_warmup", "lr": 1e-3}
    with pytest.raises(ConfigError, match=r"train.warmup_lr must be in \[0, train.lr=0.001\] or null, got -1e-06"):
        config_from_dict({**base, "train": {**cosine, "warmup_lr": -1e-6}})
    with pytest.raises(ConfigError, match=r"train.min_lr must be in \[0, train.lr=0.001\] or null, got 0.01"):
        config_from_dict({**base, "train": {**cosine, "min_lr": 1e-2}})
    with pytest.raises(ConfigError, match="train.min_lr applies to lr_schedule cosine_warmup only"):
        config_from_dict({**base, "train": {"min_lr": 0.0}})
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ConfigError, match=rf"train.layer_decay must be in \(0, 1\] or null, got {bad}"):
            config_from_dict({**base, "train": {"layer_decay": bad}})
    with pytest.raises(ConfigError, match="decay_groups"):
        config_from_dict({**base, "train": {"decay_groups": "norms"}})
    ok = config_from_dict({**base, "train": {**cosine, "warmup_lr": 0.0, "min_lr": 1e-3, "layer_decay": 1.0,
                                             "decay_groups": "skip_1d_and_bias"}}).train
    assert (ok.warmup_lr, ok.min_lr, ok.layer_decay, ok.decay_groups) == (0.0, 1e-3, 1.0, "skip_1d_and_bias")
