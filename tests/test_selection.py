"""Explicit checkpoint selection: a validation split of held-out training subjects
(data.source.val_subjects) and train.select test | val | last."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.config import config_from_dict
from pipelines.train.driver import SELECTION_LABELS, validation_split
from preprocessing.config import SourceConfig
from preprocessing.errors import DataError
from preprocessing.schema import ConfigError
from preprocessing.keypoints.dataset import config_for_id
from preprocessing.config import DataConfig
from preprocessing.sources import load_sequences
from preprocessing.keypoints.windows import window_starts
from preprocessing.store.dataset import Dataset
from preprocessing.store.storage import open_location


def _cmu(cmu_dev, **kw) -> SourceConfig:
    src = SourceConfig(kind="generic", data_3d=str(cmu_dev / "data_3d_cmu.npz"),
                       data_2d=str(cmu_dev / "data_2d_cmu_gt.npz"), cameras=str(cmu_dev / "cameras.json"),
                       train_subjects=["C01", "C03"], test_subjects=["C05"], **kw)
    src.validate()
    return src


def test_val_subjects_are_held_out_of_training(cmu_dev):
    seqs = load_sequences(_cmu(cmu_dev, val_subjects=["C03"])).sequences
    split = {s.subject: s.split for s in seqs}
    assert split == {"C01": "train", "C03": "val", "C05": "test"}
    with pytest.raises(DataError, match=r"val_subjects \['C09'\] have no training sequences"):
        load_sequences(_cmu(cmu_dev, val_subjects=["C09"]))
    with pytest.raises(ValueError, match="also test subjects"):
        _cmu(cmu_dev, val_subjects=["C05"])


def test_val_windows_like_test_and_ids_unchanged_without_val():
    for mode, t in (("seq2seq", 9), ("seq2frame", 9)):
        assert np.array_equal(window_starts(40, mode, t, 3, "val"), window_starts(40, mode, t, 3, "test"))
        assert not np.array_equal(window_starts(40, mode, t, 3, "val"), window_starts(40, mode, t, 3, "train"))
    assert "val_subjects" not in config_for_id(DataConfig())["source"]  # existing dataset ids stay valid
    held = DataConfig(source=SourceConfig(val_subjects=["S8"]))
    assert config_for_id(held)["source"]["val_subjects"] == ["S8"]


def test_select_picks_the_validation_split_and_labels_it():
    base = {"model": {"name": "mixste"}}
    with pytest.raises(ConfigError, match="train.select=val needs a validation split"):
        config_from_dict({**base, "train": {"select": "val"}})
    where = open_location("data/datasets/d")
    with_val = Dataset(where, {"splits": {"train": {"windows": 5}, "val": {"windows": 3}, "test": {"windows": 4}}, "id": "d"})
    without = Dataset(where, {"splits": {"train": {"windows": 5}, "test": {"windows": 4}}, "id": "d"})
    val_cfg = config_from_dict({**base, "data": {"source": {"val_subjects": ["S8"]}}, "train": {"select": "val"}})
    assert validation_split(val_cfg, with_val) == "val"
    with pytest.raises(DataError, match="has no validation split"):
        validation_split(val_cfg, without)
    test_cfg = config_from_dict({**base, "train": {"select": "test"}})
    assert validation_split(test_cfg, with_val) == "test"  # the papers' habit, even when val exists
    last_cfg = config_from_dict({**base, "train": {"select": "last"}})
    assert (validation_split(last_cfg, with_val), validation_split(last_cfg, without)) == ("val", "test")
    assert "papers' habit" in SELECTION_LABELS["test"] and "validation" in SELECTION_LABELS["val"]


def test_select_checkpoint_rules():
    from pipelines.train.checkpoints import CheckpointInfo, select_checkpoint

    runs = [CheckpointInfo(f"checkpoint_epoch{e:04d}", f"/r/{e}", e, v, {}) for e, v in ((1, 50.0), (2, 40.0), (3, 45.0))]
    assert select_checkpoint(runs, "val").epoch == 2  # the lowest validation MPJPE, wherever it was measured
    assert select_checkpoint(runs, "test").epoch == 2
    assert select_checkpoint(runs, "last").epoch == 3
    assert select_checkpoint([], "val") is None
    with pytest.raises(ValueError, match="train.select"):
        select_checkpoint(runs, "best")


@pytest.mark.slow
def test_select_val_scores_the_best_validation_epoch(tmp_path, ray_local):
    """train.select=val evaluates the epoch with the lowest validation MPJPE (it evaluated the last)."""
    from pipelines.train.driver import run_training

    cfg = config_from_dict({
        "name": "sel",
        "data": {"source": {"kind": "synthetic", "val_subjects": ["S5"], "synthetic": {
            "subjects": ["S1", "S5", "S9"], "actions_per_subject": 1, "frames_per_action": 120,
            "out_dir": str(tmp_path / "synthetic")}},
            "windows": {"mode": "seq2seq", "frames": 9}, "root": str(tmp_path / "datasets"), "rows_per_group": 16},
        "model": {"name": "mixste", "dim": 16, "depth": 1, "heads": 2, "drop_path_rate": 0.0},
        # a high, constant lr: validation MPJPE goes up and down, and its best epoch is not the last
        "train": {"epochs": 4, "batch_size": 16, "lr": 0.05, "lr_decay": 1.0, "num_workers": 0, "select": "val",
                  "storage_path": str(tmp_path / "runs")},
        "eval": {"batch_size": 64}})
    out = run_training(cfg, progress=lambda m: None)
    val = [h["val_mpjpe"] for h in out.history]
    best_epoch = int(np.argmin(val)) + 1
    assert best_epoch != len(val)  # the case tells best from last (seeded CPU training is reproducible)
    assert out.evaluation["epoch"] == best_epoch
    assert out.evaluation["protocol_spec"]["checkpoint"] == SELECTION_LABELS["val"]
