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


def _train_checkpoints(train: Path, trial_id: str, epoch: int) -> list[Path]:
    """A trial's Train checkpoints of `epoch`, over all its segments (pipelines/tune/pbt.py)."""
    return [d / checkpoint_name(epoch) for d in train.iterdir()
            if re.fullmatch(rf"train-{trial_id}(-from-e\d{{4}})?", d.name) and (d / checkpoint_name(epoch)).is_dir()]


def _same_files(a: Path, b: Path) -> bool:
    return all((a / f).read_bytes() == (b / f).read_bytes() for f in ("model.pt", "train_state.pt"))


@pytest.mark.slow
def test_exploiting_trials_continue_the_copied_checkpoint(tmp_path, ray_tune_cluster):
    raw = _pbt_raw(tmp_path)
    epochs = 3
    raw["train"].update(epochs=epochs, keep_best=10, cpus_per_worker=0.25)  # two trials leave CPUs for their read tasks
    raw["data"]["source"]["synthetic"]["frames_per_action"] = 150
    summary = tune_experiment(raw, "pbt", str(tmp_path / "tune"), progress=lambda s: None)
    experiment = Path(summary["dir"])
    table = pd.read_csv(experiment / "trials.csv")
    assert len(table) == 2 and (table["status"] == "DONE").all() and (table["epochs"] == epochs).all()
    train = experiment / "train"
    trial_dirs = list(experiment.glob("_trial_*"))
    # Tune's own record of each exploit: [target tag, donor tag, target epoch, donor epoch, donor
    # config, target's new config]; a tag is "<index>_<values>", the trial directory
    # "_trial_<id>_<tag>_<date>". The ordering of reports decides who copies whom and when, so the
    # checks below follow the record rather than assume one ordering.
    exploits = [json.loads(line) for line in (experiment / "pbt_global.txt").read_text().splitlines()]
    assert exploits, "no trial exploited another"

    def trial_of(tag: str) -> tuple[str, Path]:
        (d,) = [d for d in trial_dirs if f"_{tag}_" in d.name]
        return re.match(r"_trial_(.+?_\d{5})_", d.name).group(1), d

    tune_copies = [c for d in trial_dirs for c in d.glob("checkpoint_*")]
    for target_tag, donor_tag, _, k, donor_config, new_config in exploits:
        (target, target_dir), (donor_id, _) = trial_of(target_tag), trial_of(donor_tag)
        lr, donor_lr = new_config["overrides"]["train.lr"], donor_config["overrides"]["train.lr"]
        assert lr == pytest.approx(donor_lr * 0.8) or lr == pytest.approx(donor_lr * 1.2)  # explored
        # The state Tune handed over is byte for byte one of the donor's epoch-k Train checkpoints
        # (two, where the donor itself continued a copy from before k).
        sources = [c for c in _train_checkpoints(train, donor_id, k) if any(_same_files(c, t) for t in tune_copies)]
        assert sources, f"no Tune checkpoint equals {donor_id}'s epoch-{k} checkpoint"
        if k == epochs:
            # Nothing left to train: the trial ends holding the donor's last state and reports it.
            last = max(target_dir.glob("checkpoint_*"))
            final = json.loads((target_dir / "result.json").read_text().splitlines()[-1])
            assert any(_same_files(c, last) and final["val_mpjpe"] == json.loads((c / "meta.json").read_text())
                       ["metrics"]["val_mpjpe"] for c in sources)
            assert final["epoch"] == epochs
            continue
        first = train / f"train-{target}-from-e{k:04d}" / checkpoint_name(k + 1)
        history = load_train_state(str(first))["history"]
        assert any(history[:k] == load_train_state(str(c))["history"][:k] for c in sources)
        # Its own (perturbed) lr from epoch k + 1, on the donor's schedule position: lr x decay^k.
        assert json.loads((first / "meta.json").read_text())["config"]["train"]["lr"] == pytest.approx(lr)
        assert history[k]["lr"] == pytest.approx(lr * raw["train"]["lr_decay"] ** k)


def test_a_copy_of_a_last_epoch_checkpoint_reports_that_state_and_trains_nothing(tmp_path):
    """Asynchronous PBT may hand a trial a checkpoint of the last epoch (its donor finished first,
    or Tune paused it after its own last epoch). Nothing is left to train: the trial reports the
    copied epoch's metrics with that checkpoint, so its record ends with the state it holds (it
    used to end on its own earlier epoch, and trials.csv called a finished trial STOPPED)."""
    import torch
    from ray.train import Checkpoint

    from models.checkpoint import save_checkpoint
    from pipelines.tune.pbt import run_segment

    row = {"epoch": 3, "val_mpjpe": 170.5, "loss": 0.53, "windows": 192}
    path = save_checkpoint(tmp_path / "donor" / checkpoint_name(3), {"w": torch.zeros(2)},
                           {"model": {"name": "mixste"}, "frames": 27, "joints": 17, "epoch": 3,
                            "metrics": row, "config": None})
    start = Checkpoint.from_directory(str(path))
    reports = []

    def train(**kwargs):
        raise AssertionError(f"trained from a last-epoch checkpoint: {kwargs}")

    run_segment("t1", start, epochs=3, train=train, report=lambda m, c: reports.append((m, c)))
    assert reports == [({k: float(v) for k, v in row.items()}, start)]


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
