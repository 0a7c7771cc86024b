"""`tune.scheduler: pbt`: population-based training whose exploiting trials continue the copied
trial's checkpoint (weights, optimiser, schedule, RNG, epoch) with their own perturbed values.
The bit-for-bit continuation itself is tests/test_continue_run.py; here the whole Tune path."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from models.checkpoint import load_train_state
from pipelines.train.checkpoints import checkpoint_name
from pipelines.tune.driver import check_space, tune_experiment
from pipelines.tune.search import make_search
from preprocessing.schema import ConfigError
from tests.helpers import tune_demo_raw


def _pbt_raw(tmp_path: Path, **tune) -> dict:
    settings = {"scheduler": "pbt", "num_samples": 2, "max_concurrent": 2, "perturbation_interval": 1,
                "quantile_fraction": 0.5, "resample_probability": 0.0,
                "space": {"train.lr": {"loguniform": [1.0e-5, 1.0e-2]}}}
    return tune_demo_raw(tmp_path, **{**settings, **tune})


@pytest.mark.parametrize("tune, message", [
    ({"space": {"model.depth": {"choice": [1, 2]}}}, r"tune.space.model.depth: population-based training can only change"),
    ({"space": {"train.lr": {"grid": [1e-3, 1e-4]}}}, r"tune.space.train.lr: pbt samples and perturbs values"),
    ({"num_samples": 1}, r"tune.num_samples: pbt needs a population of >= 2 trials, got 1"),
    ({"perturbation_interval": 0}, r"tune.perturbation_interval: expected >= 1 epoch, got 0"),
    ({"search": "optuna"}, r"tune.scheduler pbt samples its own population: tune.search must be random"),
    ({"metrics": {"val_mpjpe": "min", "macs_per_frame": "min"}}, r"scheduler pbt compares trials on one metric"),
])
def test_pbt_settings_a_trial_could_not_honour_are_one_line(tmp_path, tune, message):
    with pytest.raises(ConfigError, match=message):
        cfg, dims = check_space(_pbt_raw(tmp_path, **tune))
        make_search(cfg, dims, 2)


def test_pbt_mutates_the_space_over_the_reported_epoch(tmp_path):
    cfg, dims = check_space(_pbt_raw(tmp_path, space={"train.lr": {"loguniform": [1e-5, 1e-2]},
                                                      "train.weight_decay": {"uniform": [0.0, 0.1]},
                                                      "model.drop_path_rate": {"choice": [0.0, 0.1]}}))
    scheduler = make_search(cfg, dims, 2).scheduler
    assert type(scheduler).__name__ == "PopulationBasedTraining"
    assert scheduler._time_attr == "epoch" and scheduler._perturbation_interval == 1
    assert set(scheduler._hyperparam_mutations["overrides"]) == {"train.lr", "train.weight_decay",
                                                                  "model.drop_path_rate"}


@pytest.mark.slow
def test_exploiting_trials_continue_the_copied_checkpoint(tmp_path, ray_tune_cluster):
    raw = _pbt_raw(tmp_path)
    raw["train"].update(epochs=3, keep_best=10, cpus_per_worker=0.25)  # two trials leave CPUs for their read tasks
    raw["data"]["source"]["synthetic"]["frames_per_action"] = 150
    summary = tune_experiment(raw, "pbt", str(tmp_path / "tune"), progress=lambda s: None)
    experiment = Path(summary["dir"])
    table = pd.read_csv(experiment / "trials.csv")
    assert len(table) == 2 and (table["status"] == "DONE").all() and (table["epochs"] == 3).all()
    train = experiment / "train"
    segments = [p for p in train.iterdir() if re.fullmatch(r"train-.+-from-e\d{4}", p.name)]
    continued = [p for p in segments if any(p.glob("checkpoint_epoch*"))]  # a copy that trained on
    assert continued, f"no trial exploited another: {sorted(p.name for p in train.iterdir())}"
    for segment in continued:
        trial, k = re.fullmatch(r"train-(.+)-from-e(\d{4})", segment.name).groups()
        k = int(k)
        first = segment / checkpoint_name(k + 1)
        history = load_train_state(str(first))["history"]
        # The state it went on from is a donor's epoch-k checkpoint: the Tune copy PBT restored is
        # byte for byte a Train checkpoint of another trial, and the history carries on from it.
        donors = [d / checkpoint_name(k) for d in train.iterdir()
                  if not d.name.startswith(f"train-{trial}") and (d / checkpoint_name(k)).is_dir()]
        copies = [c for c in experiment.glob("_trial_*/checkpoint_*")
                  if json.loads((c / "meta.json").read_text())["epoch"] == k]
        matches = [(d, c) for d in donors for c in copies
                   if all((d / f).read_bytes() == (c / f).read_bytes() for f in ("model.pt", "train_state.pt"))]
        assert matches, f"{segment.name}: no Tune checkpoint equals another trial's epoch-{k} checkpoint"
        donor = matches[0][0]
        assert history[:k] == load_train_state(str(donor))["history"][:k]
        # Its own (perturbed) lr from epoch k + 1, on the donor's schedule position: lr x decay^k.
        meta = json.loads((first / "meta.json").read_text())
        lr = meta["config"]["train"]["lr"]
        assert history[k]["lr"] == pytest.approx(lr * raw["train"]["lr_decay"] ** k)
        donor_lr = json.loads((donor / "meta.json").read_text())["config"]["train"]["lr"]
        assert lr != donor_lr  # explored: x0.8 or x1.2 of the donor's
        assert lr == pytest.approx(donor_lr * 0.8) or lr == pytest.approx(donor_lr * 1.2)
    assert (experiment / "pbt_global.txt").is_file()


def test_checkpoint_uris_use_raylift_s_schemes():
    """Tune hands PBT checkpoints as (pyarrow filesystem, path); pyarrow names GCS "gcs", raylift's
    storage layer opens gs:// (and s3://, and local paths)."""
    from types import SimpleNamespace

    import pyarrow.fs as pafs

    from pipelines.tune.pbt import checkpoint_uri

    def uri(fs, path):
        return checkpoint_uri(SimpleNamespace(filesystem=fs, path=path))

    assert uri(pafs.GcsFileSystem(anonymous=True), "bucket/exp/checkpoint_000001") == "gs://bucket/exp/checkpoint_000001"
    assert uri(pafs.S3FileSystem(anonymous=True, region="us-east-1"), "bucket/c") == "s3://bucket/c"
    assert uri(pafs.LocalFileSystem(), "/tmp/exp/c") == "/tmp/exp/c"
