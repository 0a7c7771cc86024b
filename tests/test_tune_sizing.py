"""Tune on real clusters, without Ray: batch size in frames, concurrency from intended resources,
trial-driver placement, ASHA's time axis and true epochs in the trials table, results on S3."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from pipelines.config import config_from_dict, load_config
from pipelines.tune.driver import (
    DRIVER_RESOURCE, RESULT_FILES, check_trial_fits, collect_rows, driver_resources, parse_resources,
    trial_concurrency, trial_needs, write_results,
)
from preprocessing.images.readers import DECODE_TASK_CPUS
from preprocessing.store.parquet import READ_TASK_CPUS
from pipelines.tune.search import make_scheduler
from preprocessing.schema import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _demo(**sections) -> dict:
    raw = yaml.safe_load((REPO / "configs" / "tune_demo.yaml").read_text())
    for section, values in sections.items():
        raw[section].update(values)
    return raw


def test_batch_frames_gives_every_frame_count_the_same_frames_per_step():
    cfg = config_from_dict(_demo(train={"batch_frames": 432}))
    assert [cfg.train.windows_per_batch(t) for t in (9, 27, 243, 1000)] == [48, 16, 1, 1]
    assert config_from_dict(_demo(train={"batch_frames": None, "batch_size": 5})).train.windows_per_batch(27) == 5
    with pytest.raises(ConfigError, match="train.batch_frames must be >= 1"):
        config_from_dict(_demo(train={"batch_frames": 0}))


def test_shipped_tune_configs_count_the_batch_in_frames():
    for path in sorted((REPO / "configs").glob("tune_*.yaml")):
        cfg = load_config(str(path))
        key = "data.images.frames" if "data.images.frames" in cfg.tune.space else "data.windows.frames"
        # grid or choice; image configs: T = f (data.images.frames)
        frames = list(next(iter(cfg.tune.space[key].values())))
        assert cfg.train.batch_frames is not None, path
        steps = {t: cfg.train.windows_per_batch(t) * t for t in frames}
        # Frames per step equal up to the remainder of one window.
        assert max(steps.values()) - min(steps.values()) < max(frames), (path, steps)


def test_concurrency_comes_from_the_intended_resources_not_the_live_cluster():
    raw = _demo(train={"num_workers": 2, "use_gpu": True, "gpus_per_worker": 1, "cpus_per_worker": 4},
                tune={"max_concurrent": 0, "resources": {"GPU": 8}})
    cfg = config_from_dict(raw)
    # An autoscaling cluster with a CPU-only head shows 0 GPUs at start: irrelevant here.
    assert trial_concurrency(cfg, dict(cfg.tune.resources), "tune.resources") == 4
    # CPUs bind first: each trial's 8 worker CPUs plus a read task's READ_TASK_CPUS.
    assert trial_concurrency(cfg, {"GPU": 8, "CPU": 17}, "x") == 2
    assert trial_concurrency(cfg, {"GPU": 8, "CPU": 16}, "x") == 1
    with pytest.raises(ConfigError, match="names none of the resources a trial needs"):
        trial_concurrency(cfg, {"TPU": 4}, "tune.resources")
    cfg.tune.max_concurrent = 3
    assert trial_concurrency(cfg, {"GPU": 0}, "x") == 3
    assert parse_resources("GPU=8, CPU=64") == {"GPU": 8.0, "CPU": 64.0}
    for bad in ("GPU", "GPU=x", "=3", "GPU=-1", ","):
        with pytest.raises(ConfigError, match="--resources"):
            parse_resources(bad)


def test_a_trial_leaves_a_cpu_share_for_its_data_read_tasks():
    """A trial's Train workers stream their windows through Ray Data read tasks, which are tasks that
    request CPUs too. configs/tune_search_cmu.yaml (one 1-CPU worker) on 2 CPUs ran two trials whose
    workers took both CPUs, and each trial's first read task then waited for a CPU forever."""
    cfg = load_config(REPO / "configs" / "tune_search_cmu.yaml")
    cfg.tune.max_concurrent = 0
    assert 0 < READ_TASK_CPUS < 1
    assert trial_needs(cfg) == {"CPU": 1.0 + READ_TASK_CPUS}
    assert trial_concurrency(cfg, {"CPU": 2.0}, "x") == 1
    # One trial alone: its driver's sliver, its worker and a read task fit in 2 CPUs.
    assert driver_resources(cfg, {"CPU": 2.0})["CPU"] + trial_needs(cfg)["CPU"] <= 2.0
    images = load_config(REPO / "configs" / "tune_mpstr.yaml")  # images: a decode task per trial
    images.train.num_workers = 1
    assert trial_needs(images) == {"CPU": 1.0 + DECODE_TASK_CPUS}
    assert driver_resources(images, {"CPU": 2.0})["CPU"] + trial_needs(images)["CPU"] <= 2.0


def test_a_trial_that_cannot_be_placed_on_this_machine_is_one_line():
    """On this machine's own Ray a trial that cannot be placed waited forever for its workers."""
    driver = {"CPU": 0.01}
    laptop = {"CPU": 2.0, "memory": 8e9}
    check_trial_fits(config_from_dict(_demo(train={"cpus_per_worker": 1.0})), driver, laptop)  # 1.26 of 2
    with pytest.raises(ConfigError, match=r"^one trial needs 2.26 CPU: train.num_workers=1 worker\(s\) of 2 CPU, one "
                                          r"Ray Data task and the trial's driver \(0.01 CPU\); this machine's Ray has 2:"):
        check_trial_fits(config_from_dict(_demo(train={"cpus_per_worker": 2.0})), driver, laptop)
    gpus = config_from_dict(_demo(train={"cpus_per_worker": 0.5, "use_gpu": True, "num_workers": 2}))
    with pytest.raises(ConfigError, match=r"^one trial needs 2 GPU: train.num_workers=2 worker\(s\) of 0.5 CPU, 1 GPU,"
                                          r".* this machine's Ray has 0: lower train.num_workers"):
        check_trial_fits(gpus, driver, laptop)


def test_trial_driver_asks_for_the_on_demand_driver_resource_when_the_cluster_has_it():
    cfg = config_from_dict(_demo())
    assert driver_resources(cfg, {"CPU": 0.0, DRIVER_RESOURCE: 1000.0, "GPU": 8.0}) == {DRIVER_RESOURCE: 1.0}
    assert driver_resources(cfg, {"CPU": 2.0}) == {"CPU": 0.01}  # a laptop
    cfg.tune.driver_resources = {"on_demand": 0.5}
    assert driver_resources(cfg, {DRIVER_RESOURCE: 1.0}) == {"on_demand": 0.5}


def test_shipped_cluster_heads_advertise_the_driver_resource():
    aws = yaml.safe_load((REPO / "cluster" / "aws.yaml").read_text())
    gcp = yaml.safe_load((REPO / "cluster" / "gcp.yaml").read_text())
    for launcher in (aws, gcp):
        head = launcher["available_node_types"][launcher["head_node_type"]]
        assert head["resources"].get(DRIVER_RESOURCE, 0) >= 1
        for name, node in launcher["available_node_types"].items():
            if name != launcher["head_node_type"]:
                assert DRIVER_RESOURCE not in node.get("resources", {}), name
    for manifest in ("raycluster.yaml", "rayjob-tune.yaml"):
        text = (REPO / "cluster" / "kuberay" / manifest).read_text()
        assert DRIVER_RESOURCE in text, manifest


def test_asha_counts_reported_epochs():
    cfg = config_from_dict(_demo())
    scheduler = make_scheduler(cfg)
    assert scheduler._time_attr == "epoch"  # no public getter; Tune compares rungs on this key


def _result(df: pd.DataFrame, overrides: dict) -> SimpleNamespace:
    return SimpleNamespace(config={"overrides": overrides}, metrics_dataframe=df, error=None,
                           path="/x/trial_0001")


def test_trials_table_shows_true_epochs_after_a_trial_is_retried():
    """A trial killed during epoch 3 after epoch 2's checkpoint was lost: Tune restarts
    training_iteration at 1, Train resumes after epoch 1 and redoes epoch 2."""
    raw = _demo(train={"epochs": 3})
    df = pd.DataFrame({"training_iteration": [1, 2, 1, 2], "epoch": [1, 2, 2, 3],
                       "val_mpjpe": [300.0, 250.0, 251.0, 200.0], "time_total_s": [5.0, 9.0, 4.0, 8.0]})
    row, = collect_rows([_result(df, {"model.depth": 1})], raw, "val_mpjpe")
    assert (row["epochs"], row["status"], row["best_val_mpjpe"]) == (3, "DONE", 200.0)
    stopped = df.iloc[:2]
    row, = collect_rows([_result(stopped, {"model.depth": 1})], raw, "val_mpjpe")
    assert (row["epochs"], row["status"]) == (2, "STOPPED")


def _rows() -> list[dict]:
    return [{"data.windows.frames": 9, "model.depth": 1, "T": 9, "depth": 1, "params": 10,
             "best_val_mpjpe": 130.4, "epochs": 3, "wall_s": 16.0, "status": "DONE", "trial": "a"}]


def test_tune_results_go_to_the_storage_path_on_s3(s3_server, monkeypatch, tmp_path):
    from preprocessing.store import storage

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)  # nothing may land in the job's working directory
    uri = f"s3://{s3_server.bucket}/tune/demo"
    summary = write_results(_rows(), _demo(), uri)
    assert summary["dir"] == uri and summary["best_config"] == f"{uri}/best.yaml"
    loc = storage.open_location(uri)
    # Every results file but the Optuna importances (a grid search).
    assert sorted(storage.list_files(loc)) == sorted(set(RESULT_FILES) - {"importances.png"})
    best = yaml.safe_load(storage.read_bytes(loc.child("best.yaml")))
    assert best["data"]["windows"]["frames"] == 9 and "tune" not in best
    assert list(tmp_path.iterdir()) == []
