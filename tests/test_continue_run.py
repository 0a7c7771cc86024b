"""A run that continues another run's checkpoint (what a PBT trial does when it copies a better
trial): it must go on exactly where the donor was, with only `CONTINUE_MAY_CHANGE` replaced."""
from __future__ import annotations

import pytest
import torch

from models.checkpoint import CheckpointError, load_state, load_train_state
from models.registry import build_model
from pipelines.train.checkpoints import checkpoint_name
from pipelines.train.driver import run_training
from pipelines.train.loop import build_optimizer, build_scheduler, load_resume_state
from tests.helpers import synthetic_cfg


def _weights(directory) -> dict:
    return load_state(str(directory))


@pytest.fixture(scope="module")
def donor(tmp_path_factory, ray_local):
    """A 2-epoch run whose epoch-1 checkpoint the others continue."""
    root = tmp_path_factory.mktemp("donor")
    outcome = run_training(synthetic_cfg(root, epochs=2, lr_decay=0.5, name="donor", keep_best=5),
                           progress=lambda m: None)
    return root, outcome


def test_continuing_with_the_same_settings_repeats_the_donor_s_next_epoch_exactly(donor):
    """Weights, optimiser moments, schedule, RNG streams and the data order all carry over: the
    continued epoch 2 is the donor's own epoch 2, bit for bit."""
    root, outcome = donor
    run = root / "runs" / "donor"
    lines: list[str] = []
    copy = run_training(synthetic_cfg(root, epochs=2, lr_decay=0.5, name="copy"), progress=lines.append,
                        start_from=str(run / checkpoint_name(1)))
    assert any(f"(continuing {run / checkpoint_name(1)})" in line for line in lines)
    assert [row["epoch"] for row in copy.history] == [1, 2]  # the donor's history goes with its state
    assert copy.history[0] == outcome.history[0]
    for key in ("loss", "val_mpjpe", "lr", "windows"):
        assert copy.history[1][key] == outcome.history[1][key], key
    donor_final, copy_final = _weights(run / checkpoint_name(2)), _weights(root / "runs" / "copy" / checkpoint_name(2))
    assert all(torch.equal(donor_final[k], copy_final[k]) for k in donor_final)


def test_continuing_takes_the_donor_s_state_with_this_config_s_lr_weight_decay_and_drop_path(donor):
    root, _ = donor
    start = root / "runs" / "donor" / checkpoint_name(1)
    cfg = synthetic_cfg(root, epochs=2, lr_decay=0.5, name="mutant", lr=5e-3, weight_decay=0.3)
    cfg.model.drop_path_rate = 0.2
    net = build_model(cfg.model, frames=9, joints=17)
    optimizer = build_optimizer(net, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train)
    state = load_resume_state(str(start), net, optimizer, scheduler, cfg.to_dict(), 17, _dataset_id(start),
                              continued=True)
    assert state["epoch"] == 1
    donor_weights = _weights(start)
    assert all(torch.equal(v, donor_weights[k]) for k, v in net.state_dict().items())
    donor_optimizer = load_train_state(str(start))["optimizer"]
    for key, moments in donor_optimizer["state"].items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(optimizer.state_dict()["state"][key][name], moments[name])
    group = optimizer.param_groups[0]
    # epoch 2 of an lr 5e-3 run decaying x0.5 per epoch, and the new weight decay
    assert group["lr"] == pytest.approx(5e-3 * 0.5) and group["weight_decay"] == 0.3
    assert scheduler.last_epoch == 1 and scheduler.base_lrs == [pytest.approx(5e-3)]
    scheduler.step()  # the schedule goes on from the new base
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-3 * 0.25)
    # The donor trained with drop_path_rate 0.0: another rate is accepted (a setting, not weights),
    # another trained setting is not.
    cfg.train.batch_size = 8
    with pytest.raises(CheckpointError, match=r"train.batch_size: checkpoint 16, config 8"):
        load_resume_state(str(start), net, optimizer, scheduler, cfg.to_dict(), 17, _dataset_id(start), continued=True)


def _dataset_id(checkpoint) -> str:
    import json

    return json.loads((checkpoint / "meta.json").read_text())["dataset_id"]


def test_continuing_a_checkpoint_of_other_trained_settings_is_refused(donor):
    root, _ = donor
    start = root / "runs" / "donor" / checkpoint_name(1)
    with pytest.raises(CheckpointError, match=r"model settings differ from the config \(model.depth\)"):
        run_training(_deeper(root), progress=lambda m: None, start_from=str(start))
    with pytest.raises(CheckpointError, match=r"train.batch_size: checkpoint 16, config 8"):
        run_training(synthetic_cfg(root, epochs=2, lr_decay=0.5, name="batch", batch_size=8),
                     progress=lambda m: None, start_from=str(start))


def _deeper(root):
    cfg = synthetic_cfg(root, epochs=2, lr_decay=0.5, name="deeper")
    cfg.model.depth = 2
    return cfg
