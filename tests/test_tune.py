"""Ray Tune searches: space parsing (pure), and real sweeps of tiny Ray Train trials on CPU."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipelines.config import config_from_dict, load_config
from preprocessing.schema import ConfigError
from pipelines.tune.space import candidate_overrides, data_key, data_variants, parse_space
from pipelines.tune.driver import check_space, tune_experiment
from tests.helpers import tune_demo_raw

REPO = Path(__file__).resolve().parents[1]


def test_parse_space_domains():
    dims = parse_space({
        "data.windows.frames": {"grid": [9, 27]},
        "model.depth": {"choice": [2, 4]},
        "train.lr": {"loguniform": [1e-5, 1e-3]},
        "train.batch_size": {"randint": [2, 8]},
    })
    assert [d.kind for d in dims] == ["grid", "choice", "loguniform", "randint"]
    assert dims[2].candidates() == (1e-5, 1e-3) and dims[3].candidates() == (2, 7)
    assert len(candidate_overrides(dims)) == 2 * 2 * 2 * 2
    assert data_variants(dims) == [{"data.windows.frames": 9}, {"data.windows.frames": 27}]
    assert data_key({"model.depth": 2, "data.windows.frames": 9}) == data_key({"data.windows.frames": 9})


@pytest.mark.parametrize("space, message", [
    ({}, "empty search space"),
    ({"model.depth": [2, 4]}, "expected one of"),
    ({"model.depth": {"grid": []}}, "non-empty list"),
    ({"train.lr": {"uniform": [1e-3, 1e-5]}}, "low must be < high"),
    ({"train.lr": {"loguniform": [0, 1]}}, "bounds must be > 0"),
    ({"data.windows.frames": {"randint": [9, 81]}}, "data keys need grid or choice"),
])
def test_parse_space_errors(space, message):
    with pytest.raises(ConfigError, match=message):
        parse_space(space)


def test_check_space_rejects_invalid_combinations(tmp_path):
    raw = tune_demo_raw(tmp_path, space={"model.depth": {"grid": [2, 0]}})
    with pytest.raises(ConfigError, match=r"combination \{'model.depth': 0\}"):
        check_space(raw)
    raw = tune_demo_raw(tmp_path, space={"model.dpeth": {"grid": [2]}})
    with pytest.raises(ConfigError, match="unknown key 'model.dpeth'"):
        check_space(raw)
    raw = tune_demo_raw(tmp_path, space={"data.windows.frames": {"grid": [8]}})
    config_from_dict(raw)  # the base is fine; seq2seq accepts even T
    raw["train"]["num_workers"] = 0
    with pytest.raises(ConfigError, match="need >= 1 Ray Train worker"):
        check_space(raw)


def test_shipped_tune_configs_load():
    for path in sorted((REPO / "configs").glob("tune_*.yaml")):
        cfg = load_config(str(path))
        assert cfg.tune is not None and cfg.tune.space, path
        parse_space(cfg.tune.space)


def test_a_second_tune_of_a_live_experiment_is_refused_before_ray_starts(tmp_path):
    """Issue 24: two `raylift tune` runs into one experiment directory interleaved their trials,
    tables and Tune state. The experiment's lease is taken first: the second is refused at once,
    naming the live one, with Ray never started and nothing written."""
    import ray

    from preprocessing.store import lease
    from preprocessing.store.storage import open_location

    raw = tune_demo_raw(tmp_path, space={"model.depth": {"grid": [1]}})
    experiment = tmp_path / "tune" / raw["name"]
    if ray.is_initialized():  # left by an earlier test
        ray.shutdown()
    with lease.acquire(open_location(str(experiment)).child(".lock"), f"raylift tune of experiment {raw['name']}"):
        with pytest.raises(lease.LeaseHeld, match=rf"{experiment}/\.lock is held by raylift tune of experiment "
                                                  rf"{raw['name']} \(host .*, pid {os.getpid()}"):
            tune_experiment(raw, raw["name"], str(tmp_path / "tune"), progress=lambda s: None)
        assert not ray.is_initialized()
        assert sorted(p.name for p in experiment.iterdir()) == [".lock"]
        assert not (tmp_path / "datasets").exists()



# The 2 frame counts x 2 depths grid (table, plot, best config, one dataset per frame count) runs
# as a submitted job on a 2-node cluster over S3: tests/test_submit.py, the staged-data flow.


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_trials_with_whole_cpu_workers_train_on_a_two_cpu_cluster(tmp_path, ray_tune_cluster):
    """configs/tune_search_cmu.yaml's shape (one 1-CPU worker per trial, concurrency sized from the
    cluster): on 2 CPUs the trials' workers took every CPU and their first Ray Data read task
    waited forever, with no error. Now one trial runs at a time, beside its read tasks."""
    raw = tune_demo_raw(tmp_path, space={"model.depth": {"grid": [1, 2]}}, max_concurrent=0)
    raw["train"].update(epochs=1, cpus_per_worker=1)
    summary = tune_experiment(raw, "whole_cpus", str(tmp_path / "tune"), progress=lambda s: None)
    table = pd.read_csv(Path(summary["dir"]) / "trials.csv")
    assert len(table) == 2 and (table["status"] == "DONE").all() and (table["epochs"] == 1).all()


@pytest.mark.slow
def test_asha_stops_a_hopeless_trial_early(tmp_path, ray_tune_cluster):
    """Constructed: the second trial cannot learn (lr ~ 0), so ASHA stops it at the first rung."""
    raw = tune_demo_raw(
        tmp_path,
        space={"train.lr": {"grid": [3e-3, 1e-12]}},
        max_concurrent=1, grace_period=1, reduction_factor=2,
    )
    raw["train"]["epochs"] = 4
    summary = tune_experiment(raw, "asha", str(tmp_path / "tune"), progress=lambda s: None)
    table = pd.read_csv(Path(summary["dir"]) / "trials.csv")
    hopeless = table[table["train.lr"] < 1e-9].iloc[0]
    good = table[table["train.lr"] > 1e-9].iloc[0]
    assert good["epochs"] == 4 and good["status"] == "DONE"
    assert hopeless["epochs"] < 4 and hopeless["status"] == "STOPPED"
    # Every epoch reported the trial's cost: the table's MACs, speed and memory come from Tune's results.
    assert (table["macs_per_frame"] > 0).all() and (table["train_frames_per_s"] > 0).all()
    assert (table["peak_memory_mb"] > 0).all()
    assert "learning_curves.png" in (Path(summary["dir"]) / "report.md").read_text()
    # The trivial baseline beside the trials, scored by their own validation code: 4 epochs beat
    # it clearly; a model whose weights never moved does not.
    from pipelines.train.baseline import mean_pose_validation

    mean_pose, split = mean_pose_validation(config_from_dict(raw))
    assert summary["mean_pose"] == {"val_mpjpe": pytest.approx(mean_pose), "split": split,
                                    "frames": raw["data"]["windows"]["frames"]}
    assert f"Mean pose: {mean_pose:.2f} mm val_mpjpe on the {split} split" in (Path(summary["dir"]) / "trials.md").read_text()
    assert good["best_val_mpjpe"] < 0.85 * mean_pose < hopeless["best_val_mpjpe"]  # measured: 128.6, 173.0, 667.6


@pytest.mark.slow
def test_interrupted_tune_resumes_without_rerunning_finished_trials(tmp_path):
    """Kill `raylift tune` after its first trial finished; `--resume` completes the rest only."""
    raw = tune_demo_raw(tmp_path, max_concurrent=1, space={"model.depth": {"grid": [1, 2]}})
    raw["train"]["epochs"] = 2
    config = tmp_path / "tune.yaml"
    config.write_text(yaml.safe_dump(raw))
    raylift = [sys.executable, "-m", "pipelines.cli"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(raylift + ["tune", "--config", str(config)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    experiment = tmp_path / "tune" / raw["name"]
    deadline = time.time() + 400
    first = None
    try:
        while time.time() < deadline and first is None:
            for progress in experiment.glob("*/progress.csv") if experiment.exists() else []:
                if len(pd.read_csv(progress)) >= 2:
                    first = progress
                    break
            time.sleep(1)
        assert first is not None, "the first trial never finished"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    rows_before = len(pd.read_csv(first))
    mtime_before = first.stat().st_mtime
    assert (experiment / ".lock").is_file()  # the killed driver's lease: its dead pid frees it at once
    done = subprocess.run(raylift + ["tune", "--resume", str(experiment)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(experiment / "trials.csv")
    assert len(table) == 2 and table["best_val_mpjpe"].notna().all()
    assert len(pd.read_csv(first)) == rows_before and first.stat().st_mtime == mtime_before
    assert not (experiment / ".lock").exists()


def test_write_results_table_plot_and_best_config(tmp_path):
    """Pure results writing: sorted table without repeated columns, plot, a valid best config."""
    from pipelines.tune.driver import write_results

    raw = tune_demo_raw(tmp_path)
    rows = [
        {"data.windows.frames": 9, "model.depth": 1, "T": 9, "depth": 1, "params": 10, "best_val_mpjpe": 130.4,
         "epochs": 3, "wall_s": 16.0, "status": "DONE", "trial": "a"},
        {"data.windows.frames": 27, "model.depth": 2, "T": 27, "depth": 2, "params": 20, "best_val_mpjpe": 241.5,
         "epochs": 1, "wall_s": 12.1, "status": "STOPPED", "trial": "b"},
        {"data.windows.frames": 27, "model.depth": 1, "T": 27, "depth": 1, "params": 11, "best_val_mpjpe": None,
         "epochs": 0, "wall_s": None, "status": "ERROR", "trial": "c"},
    ]
    summary = write_results(rows, raw, tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert list(table.columns)[:2] == ["T", "depth"] and "data.windows.frames" not in table
    assert "| 9 | 1 | 10 | 130.40 | 3 | 16.0 | DONE | a |" in summary["markdown"]
    assert (tmp_path / "out" / "mpjpe_vs_frames.png").stat().st_size > 1000
    best = load_config(summary["best_config"])
    assert (best.data.windows.frames, best.model.depth, best.tune) == (9, 1, None)
