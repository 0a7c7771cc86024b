"""Learning-rate schedules and optimiser options (pipelines/train/schedules.py): each schedule's
per-epoch lr against hand-computed values, through the torch scheduler the worker steps, and a
resumed run continuing the schedule exactly."""
from __future__ import annotations

import pytest
import torch

from pipelines.config import TrainConfig, config_from_dict
from pipelines.train.loop import build_optimizer, build_scheduler, current_lr
from pipelines.train.schedules import lr_sequence
from preprocessing.schema import ConfigError


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
# 2 warm-up epochs, then cosine over the remaining 4: 0.5 * (1 + cos(pi * j / 4)), j = 0..3
COSINE = TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05, lr_schedule="cosine_warmup",
                     warmup_epochs=2, epochs=6)
COSINE_LR = [5e-4, 1e-3, 1e-3, 8.535533906e-4, 5e-4, 1.464466094e-4]


@pytest.mark.parametrize("tc, expected", [
    (FUSIONFORMER, FUSIONFORMER_LR), (STEP, STEP_LR), (EXPONENTIAL, EXPONENTIAL_LR), (COSINE, COSINE_LR),
], ids=["exponential_step", "step", "exponential", "cosine_warmup"])
def test_schedule_matches_hand_computed_lr(tc, expected):
    tc.validate()
    assert lr_sequence(tc) == pytest.approx(expected, rel=1e-8)
    assert _stepped(tc, tc.epochs) == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("tc", [FUSIONFORMER, STEP, EXPONENTIAL, COSINE],
                         ids=["exponential_step", "step", "exponential", "cosine_warmup"])
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
