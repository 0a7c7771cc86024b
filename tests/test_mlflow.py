"""MLflow tracking (`tracking:`, pipelines/train/tracking.py): real tiny training runs and a tiny
search logged to a local store and to a real `mlflow server`, read back with MlflowClient."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from pipelines.config import config_from_dict
from pipelines.train.tracking import ENV_URI, STORE_DB, TAG_COMMIT, TAG_DATASET, TAG_RUN_DIR, target, train_run
from pipelines.tune.tracking import MLFLOW_PARENT, TAG_PARENT, TAG_TUNE_DIR
from preprocessing.schema import ConfigError
from preprocessing.version import source_commit
from tests.helpers import synthetic_cfg

REPO = Path(__file__).resolve().parents[1]
SERVER_START_S = 120  # a first `mlflow server` creates its database: slow on a busy 2-core machine



@pytest.fixture
def no_env_store(monkeypatch):
    """Tracking only where a test turns it on (a developer's MLFLOW_TRACKING_URI would turn it on)."""
    monkeypatch.delenv(ENV_URI, raising=False)


def _tracked(root: Path, tracking: dict | None, **train):
    raw = synthetic_cfg(root, **train).to_dict()
    raw["tracking"] = tracking
    return config_from_dict(raw)


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _only_run(client, experiment: str):
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, path)}


def _check_train_run(client, run, out) -> None:
    """What every tracked train run holds: config params, one val_mpjpe per epoch as it was reported,
    tags, the run directory's files."""
    from pipelines.train.logs import read_csv

    data = run.data
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    assert (data.params["model.depth"], data.params["model.name"], data.params["train.epochs"]) == ("1", "mixste", "2")
    assert data.params["train.betas"] == "[0.9, 0.999]" and data.params["data.windows.frames"] == "9"
    history = client.get_metric_history(run.info.run_id, "val_mpjpe")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (h["epoch"], pytest.approx(h["val_mpjpe"])) for h in out.history]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    # Logged as the run went: epoch 1's value was in before epoch 2 had trained.
    first = min(history, key=lambda m: m.step)
    assert first.timestamp <= run.info.end_time - 1000 * out.history[-1]["epoch_time_s"]
    assert {"lr", "windows_per_s", "epoch_time_s", "workers"} <= set(data.metrics)
    assert data.tags[TAG_DATASET] == out.dataset.id and data.tags[TAG_RUN_DIR] == out.run_uri
    assert data.tags[TAG_COMMIT] == source_commit() != "unknown"
    assert {"config.yaml", "metrics.csv", "training_curves.png", "tensorboard"} <= _artifacts(client, run.info.run_id)
    downloads = Path(out.run_uri).parent / "downloaded"
    downloads.mkdir(exist_ok=True)
    logged = client.download_artifacts(run.info.run_id, "metrics.csv", str(downloads))
    assert read_csv(str(Path(logged).parent)) == read_csv(out.run_uri)


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("tracking, message", [
    ({"mlflow_uri": 5}, r"^tracking\.mlflow_uri: got 5, expected a string$"),
    ({"uri": "runs/mlflow"}, r"^unknown key 'tracking\.uri' \(expected one of: mlflow_uri, experiment, artifacts\)$"),
    ({"mlflow_uri": "localhost:5000"}, r"unknown scheme 'localhost' \(expected a local directory or a URI"),
    ({"mlflow_uri": "s3://bucket/mlflow"}, r"unknown scheme 's3'"),
    ({"experiment": " "}, r"tracking\.experiment must be a non-empty name or null$"),
    ({"artifacts": "yes"}, r"^tracking\.artifacts: got 'yes', expected true or false$"),
    ("runs/mlflow", r"^tracking: expected a mapping, got str$"),
])
def test_tracking_config_errors_are_one_line(tmp_path, tracking, message):
    with pytest.raises(ConfigError, match=message) as e:
        _tracked(tmp_path, tracking)
    assert "\n" not in str(e.value)


def test_tracking_targets_and_a_store_mlflow_refuses(tmp_path, monkeypatch, no_env_store):
    """Off without a URI; MLFLOW_TRACKING_URI turns it on; a directory is an SQLite store inside it.
    A store MLflow refuses (a file: store, which MLflow 3 keeps off by default) is one line naming
    the URI, raised before any training starts (train_run opens the run on entering)."""
    assert target(None, "tiny") is None and target(_tracked(tmp_path, {}).tracking, "tiny") is None
    monkeypatch.setenv(ENV_URI, "http://127.0.0.1:5000")
    assert target(None, "tiny").uri == "http://127.0.0.1:5000" and target(None, "tiny").experiment == "tiny"
    monkeypatch.chdir(tmp_path)
    local = target(_tracked(tmp_path, {"mlflow_uri": "store", "experiment": "team"}).tracking, "tiny")
    assert local.uri == f"sqlite:///{tmp_path / 'store' / STORE_DB}" and local.experiment == "team"
    assert local.artifact_location == (tmp_path / "store" / "artifacts").as_uri()

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    cfg = _tracked(tmp_path, {"mlflow_uri": (tmp_path / "mlruns").as_uri()})
    with pytest.raises(ConfigError, match=r"^MLflow tracking at file://.*mlruns .* failed: .*filesystem") as e:
        with train_run(cfg, "tiny", str(tmp_path / "runs" / "tiny"), "dataset-id", (), progress=lambda s: None):
            pytest.fail("the block ran although the store was refused")
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- train
def test_tracking_is_off_by_default(tmp_path, monkeypatch, ray_tune_cluster, no_env_store):
    """No `tracking:` and no MLFLOW_TRACKING_URI: a run writes no MLflow store anywhere (MLflow's own
    defaults would put one in the working directory)."""
    from pipelines.train.driver import run_training

    monkeypatch.chdir(tmp_path)
    lines: list[str] = []
    out = run_training(_tracked(tmp_path, None, epochs=1), progress=lines.append)
    assert [h["epoch"] for h in out.history] == [1]
    made = {p.name for p in tmp_path.rglob("*")}
    assert not made & {"mlruns", "mlflow.db", "mlartifacts"}, made
    assert not any("MLflow" in line for line in lines)


def test_train_run_logs_to_a_local_store_and_a_resumed_run_may_change_tracking(tmp_path, ray_tune_cluster,
                                                                                no_env_store):
    """`num_workers: 0` (the loop in this process calls the callback) into a directory store; then
    the same run resumed for one more epoch into another experiment: not refused, and logged as a
    new MLflow run holding epoch 3 only."""
    from pipelines.train.driver import run_training

    store = tmp_path / "mlflow"
    lines: list[str] = []
    out = run_training(_tracked(tmp_path, {"mlflow_uri": str(store)}), progress=lines.append)
    client = _client(f"sqlite:///{store / STORE_DB}")
    run = _only_run(client, "tiny")
    _check_train_run(client, run, out)
    assert any(f"MLflow: run {run.info.run_id}" in line for line in lines)
    assert client.get_experiment_by_name("tiny").artifact_location == (store / "artifacts").as_uri()
    assert (store / "artifacts").is_dir()

    lines.clear()
    out = run_training(_tracked(tmp_path, {"mlflow_uri": str(store), "experiment": "resumed"}, epochs=3),
                       progress=lines.append)
    assert any("resuming from" in line for line in lines)
    resumed = _only_run(client, "resumed")
    assert [m.step for m in client.get_metric_history(resumed.info.run_id, "val_mpjpe")] == [3]
    assert resumed.data.params["train.epochs"] == "3" and resumed.data.tags[TAG_RUN_DIR] == out.run_uri
    assert _only_run(client, "tiny").info.run_id == run.info.run_id  # the first run is left as it was


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (SQLite backend, artifacts served by it) on a free 127.0.0.1 port."""
    root = tmp_path_factory.mktemp("mlflow_server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts")]
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + SERVER_START_S
        while True:
            assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "mlflow server did not answer /health"
            time.sleep(0.5)
        yield url, root
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # its job runners, should any outlive it
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


@pytest.mark.slow
def test_train_run_on_ray_train_workers_logs_to_a_server(tmp_path, ray_tune_cluster, mlflow_server, monkeypatch):
    """`num_workers: 1` (Ray Train's controller calls the callback) into a real tracking server named
    by MLFLOW_TRACKING_URI alone; artifacts are uploaded through the server to its destination."""
    from pipelines.train.driver import run_training

    url, root = mlflow_server
    monkeypatch.setenv(ENV_URI, url)
    out = run_training(_tracked(tmp_path, None, num_workers=1), progress=lambda s: None)
    client = _client(url)
    run = _only_run(client, "tiny")
    _check_train_run(client, run, out)
    assert run.data.metrics["workers"] == 1
    assert (root / "artifacts").is_dir() and any(p.name == "metrics.csv" for p in (root / "artifacts").rglob("*"))


# ----------------------------------------------------------------------------- tune
@pytest.mark.slow
@pytest.mark.parametrize("error, status", [(RuntimeError("a trial driver died"), "FAILED"),
                                           (KeyboardInterrupt(), "KILLED")])
def test_a_search_that_fails_or_is_stopped_ends_its_parent_run(tmp_path, no_env_store, error, status):
    """A search's parent run used to stay RUNNING in MLflow's UI when the search failed or was
    stopped with Ctrl-C: it now ends FAILED or KILLED, with the results written so far; a resume
    finishes that same parent."""
    from pipelines.tune.tracking import tune_run

    cfg = _tracked(tmp_path, {"mlflow_uri": str(tmp_path / "mlflow"), "experiment": "search"})
    experiment = tmp_path / "tune" / "demo"
    experiment.mkdir(parents=True)
    (experiment / "raylift_tune.yaml").write_text("name: demo\n")
    with pytest.raises(type(error)):
        with tune_run(cfg, "demo", str(experiment), ("raylift_tune.yaml", "trials.csv"), False,
                      progress=lambda s: None) as callbacks:
            assert [type(c).__name__ for c in callbacks] == ["TrialRuns"]  # the trials' child runs
            raise error
    client = _client(f"sqlite:///{tmp_path / 'mlflow' / STORE_DB}")
    parent = _only_run(client, "search")
    assert parent.info.status == status and parent.data.tags[TAG_TUNE_DIR] == str(experiment)
    assert _artifacts(client, parent.info.run_id) == {"raylift_tune.yaml"}  # trials.csv was never written
    # `raylift tune --resume` finishes the same parent (the restored Tuner keeps its trials' callback).
    (experiment / "trials.csv").write_text("trial\n1\n")
    with tune_run(cfg, "demo", str(experiment), ("raylift_tune.yaml", "trials.csv"), True,
                  progress=lambda s: None) as callbacks:
        assert callbacks == []
    resumed = _only_run(client, "search")
    assert resumed.info.run_id == parent.info.run_id and resumed.info.status == "FINISHED"
    assert _artifacts(client, parent.info.run_id) == {"raylift_tune.yaml", "trials.csv"}


def test_tune_logs_a_parent_run_and_one_child_per_trial(tmp_path, ray_tune_cluster, no_env_store):
    """2 trials of 1 epoch: a parent run with the base config, finished with the search's result
    files; each trial a child run (mlflow.parentRunId) with its searched value and its epochs."""
    from pipelines.tune.driver import RESULT_FILES, tune_experiment

    raw = yaml.safe_load((REPO / "configs" / "tune_demo.yaml").read_text())
    raw["data"]["source"]["synthetic"].update(out_dir=str(tmp_path / "synthetic"), frames_per_action=120)
    raw["data"]["root"] = str(tmp_path / "datasets")
    raw["train"].update(storage_path=str(tmp_path / "runs"), epochs=1)
    raw["tune"].update(storage_path=str(tmp_path / "tune"), space={"model.depth": {"grid": [1, 2]}},
                       max_concurrent=1)
    store = tmp_path / "mlflow"
    raw["tracking"] = {"mlflow_uri": str(store), "experiment": "search"}
    summary = tune_experiment(raw, "demo", str(tmp_path / "tune"), progress=lambda s: None)
    # Ray's callback set MLflow's tracking URI, which MLflow also writes into the environment: put back,
    # or every later run in this process would be tracked.
    assert "MLFLOW_TRACKING_URI" not in os.environ

    client = _client(f"sqlite:///{store / STORE_DB}")
    runs = client.search_runs([client.get_experiment_by_name("search").experiment_id])
    parents = [r for r in runs if MLFLOW_PARENT not in r.data.tags]
    children = [r for r in runs if MLFLOW_PARENT in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.run_name == "demo"
    assert parent.data.tags[TAG_TUNE_DIR] == summary["dir"] and parent.data.params["train.epochs"] == "1"
    assert parent.data.params["tune.space.model.depth.grid"] == "[1, 2]"
    logged = _artifacts(client, parent.info.run_id)
    written = {f for f in RESULT_FILES if (Path(summary["dir"]) / f).is_file()}
    assert written <= logged and {"trials.csv", "trials.md", "best.yaml", "raylift_tune.yaml"} <= logged
    depths = set()
    for child in children:
        assert child.data.tags[MLFLOW_PARENT] == child.data.tags[TAG_PARENT] == parent.info.run_id
        assert child.info.status == "FINISHED"
        depths.add(child.data.params["overrides/model.depth"])
        history = client.get_metric_history(child.info.run_id, "val_mpjpe")
        assert len(history) == 1 and history[0].value > 0 and history[0].step == 1
        # The epoch row, not Tune's bookkeeping (the searched value again, pid, timestamps).
        assert {"loss", "epoch", "lr"} <= set(child.data.metrics)
        assert not {"pid", "done", "timestamp", "config/overrides/model.depth"} & set(child.data.metrics)
    assert depths == {"1", "2"}
    # A trial's own Train run is not logged a second time.
    assert not any(TAG_RUN_DIR in r.data.tags for r in runs)
