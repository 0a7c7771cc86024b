"""Optional MLflow tracking of `raylift train` and `raylift tune`: experiments a team can browse.

```yaml
tracking:
  mlflow_uri: runs/mlflow   # a local directory, or http://host:port, sqlite:///..., postgresql://...
  experiment: null          # the MLflow experiment; default: the config's name (tune: the search's)
  artifacts: true           # upload the run's result files
```
Off when `mlflow_uri` is empty and `MLFLOW_TRACKING_URI` is unset; that variable, when set, turns it
on. A local directory holds an SQLite store (`<dir>/mlflow.db`, artifacts under `<dir>/artifacts`):
MLflow 3 refuses plain file stores unless `MLFLOW_ALLOW_FILE_STORE=true`. Browse a directory with
`mlflow ui --backend-store-uri sqlite:///<absolute dir>/mlflow.db`, a server at its own address. The
per-epoch metrics are logged by the Ray Train controller's process and, in a search, the trial runs
by the Tune driver: on a multi-node cluster use a tracking server (or a directory every node shares).

`raylift train` (`train_run`, around the run in `run_training`): one MLflow run per invocation,
- params: the whole resolved config, dotted keys (`model.depth`, `train.lr`), values as YAML writes;
- metrics: every numeric key of each epoch's reported row (`loss`, `val_mpjpe`, `lr`, ...), step =
  epoch, logged as each epoch is reported;
- tags: `raylift.dataset_id`, `raylift.git_commit` (`unknown` outside a git checkout, e.g. a
  submitted job's package), `raylift.run_dir`;
- artifacts (`tracking.artifacts`): what the run directory holds besides checkpoints: config.yaml,
  metrics.csv, training_curves.png, tensorboard/ and eval/results.{md,json}.
A resumed run is a new MLflow run with the same `raylift.run_dir`, logging the epochs it trains:
MLflow params never change, and a resumed run may change `train.epochs` and the like.

Where epochs are logged: `EpochMetrics`, a Ray Train `UserCallback`. Ray Train calls it on its
controller after every `ray.train.report` with each worker's row (rank 0's is logged), and with
`num_workers: 0` the loop calls it in this process itself (pipelines/train/worker.py), so metrics
appear while the run goes in both modes, and no worker process talks to MLflow. Ray's `setup_mlflow`
would instead open the run inside the rank-0 worker, which is replaced, with its MLflow session,
whenever Ray Train restarts the worker group. The driver opens the run before training, so the
callback (pickled to the controller) carries only the URI and run id, and closes it afterwards with
the artifacts and a status (FINISHED, FAILED or KILLED). Opening is strict (a wrong URI or an
unreachable server is a one-line error before training starts); later tracking failures are warned
about and never fail a run that trained.

`raylift tune` is tracked by pipelines/tune/tracking.py: a parent run per search, a child run per
trial; a trial's own Ray Train run is not logged again (`train_run` does nothing inside a trial).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence
from urllib.parse import urlsplit

from ray.train import UserCallback

from preprocessing.schema import ConfigError
from preprocessing.version import source_commit

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from pipelines.config import ExperimentConfig, TrackingConfig

ENV_URI = "MLFLOW_TRACKING_URI"
STORE_DB = "mlflow.db"  # a directory store's SQLite database
STORE_ARTIFACTS = "artifacts"  # and its artifact root
PARAMS_PER_BATCH = 100  # MLflow's limit of params in one log_batch call
TAG_DATASET = "raylift.dataset_id"
TAG_COMMIT = "raylift.git_commit"
TAG_RUN_DIR = "raylift.run_dir"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """Where runs are tracked: the URI as MLflow takes it, the experiment, the artifact location of
    an experiment created here (None: MLflow's or the server's default) and whether to upload files."""

    uri: str
    experiment: str
    artifact_location: Optional[str]
    artifacts: bool


def target(tracking: Optional["TrackingConfig"], experiment: str) -> Optional[Target]:
    """The tracking target of a config's `tracking:` section (None: off). `experiment` is the
    default experiment name. A scheme-less URI is a local directory store, made absolute here: the
    controller that logs epochs runs in another process."""
    uri = (tracking.mlflow_uri if tracking else "") or os.environ.get(ENV_URI, "")
    if not uri:
        return None
    name = (tracking.experiment if tracking else None) or experiment
    upload = tracking.artifacts if tracking else True
    if urlsplit(uri).scheme:
        return Target(uri, name, None, upload)
    root = Path(uri).expanduser().resolve()
    return Target(f"sqlite:///{root / STORE_DB}", name, (root / STORE_ARTIFACTS).as_uri(), upload)


def config_params(cfg_dict: dict) -> dict[str, str]:
    """A config as MLflow params: nested keys dotted, values as YAML/JSON spells them (`null`,
    `true`, `[0.9, 0.999]`), strings as they are; an empty section stays one param (`{}`)."""
    from pipelines.train.loop import flatten_config

    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in flatten_config(cfg_dict).items()}


def epoch_metrics(row: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a reported epoch row (booleans and strings are not metrics)."""
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# ----------------------------------------------------------------------------- train
class EpochMetrics(UserCallback):
    """Logs each reported epoch's metrics (rank 0's row, step = its `epoch`) to one MLflow run.
    Holds only the tracking URI and run id, so it pickles to Ray Train's controller."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.uri, self.run_id = uri, run_id

    def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Metric
        from mlflow.exceptions import MlflowException

        row = metrics[0]
        now, step = int(time.time() * 1000), int(row["epoch"])
        values = [Metric(k, v, now, step) for k, v in epoch_metrics(row).items()]
        try:
            MlflowClient(self.uri).log_batch(self.run_id, metrics=values)
        except MlflowException as e:  # a tracking outage must not stop the training
            log.warning("MLflow: epoch %d not logged to run %s at %s: %s", step, self.run_id, self.uri,
                        first_line(e))


@contextlib.contextmanager
def train_run(cfg: "ExperimentConfig", run_name: str, run_uri: str, dataset_id: str, files: Sequence[str],
              progress: Callable[[str], None] = print) -> Iterator[list[UserCallback]]:
    """Track the training run in the block: yields the Ray Train callbacks to add (none when tracking
    is off or inside a Tune trial), and on leaving uploads `files` (the run directory's result files
    and folders, named relative to it) and sets the run's status (FAILED on an exception, KILLED on
    Ctrl-C)."""
    found = target(cfg.tracking, cfg.name)
    if found is None or _in_tune_trial():
        yield []
        return
    tags = {TAG_DATASET: dataset_id, TAG_COMMIT: source_commit(), TAG_RUN_DIR: run_uri}
    client, run_id = open_run(found, run_name, tags, config_params(cfg.to_dict()))
    progress(f"MLflow: run {run_id} in experiment {found.experiment!r} at {found.uri}")
    try:
        yield [EpochMetrics(found.uri, run_id)]
    except BaseException as e:
        close_run(client, run_id, run_uri, files if found.artifacts else (),
                  "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED", progress)
        raise
    close_run(client, run_id, run_uri, files if found.artifacts else (), "FINISHED", progress)


def _in_tune_trial() -> bool:
    """True inside a Ray Tune trial, whose reports the search's tracking logs (pipelines/tune/tracking.py)."""
    import warnings

    import ray.tune

    with warnings.catch_warnings():  # outside a trial Ray warns and returns None
        warnings.simplefilter("ignore")
        return ray.tune.get_context().get_trial_id() is not None


# ----------------------------------------------------------------------------- runs
def open_run(found: Target, run_name: str, tags: dict[str, str],
             params: dict[str, str]) -> tuple["MlflowClient", str]:
    """A new run in the target's experiment (created when missing) with `tags` and `params`. An
    unusable store or unreachable server is a one-line ConfigError naming the URI."""
    from mlflow import MlflowClient
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException

    try:
        client = MlflowClient(found.uri)
        run_id = client.create_run(_experiment_id(client, found), run_name=run_name, tags=tags).info.run_id
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            client.log_batch(run_id, params=items[i:i + PARAMS_PER_BATCH])
    except MlflowException as e:
        raise ConfigError(f"MLflow tracking at {found.uri} (tracking.mlflow_uri or {ENV_URI}) failed: "
                          f"{first_line(e)}") from None
    return client, run_id


def _experiment_id(client: "MlflowClient", found: Target) -> str:
    experiment = client.get_experiment_by_name(found.experiment)
    if experiment is None:
        return client.create_experiment(found.experiment, artifact_location=found.artifact_location)
    if experiment.lifecycle_stage == "deleted":
        raise ConfigError(f"tracking.experiment {found.experiment!r} is deleted in {found.uri}: restore it "
                          "(`mlflow experiments restore`) or name another")
    return experiment.experiment_id


def close_run(client: "MlflowClient", run_id: str, where: str, files: Sequence[str], status: str,
              progress: Callable[[str], None]) -> None:
    """Upload `files` (names of files or directories under `where`, a local path or an object-store
    URI; missing ones skipped) and end the run with `status`. A tracking failure here is a warning:
    the run's own results are already in place."""
    from mlflow.exceptions import MlflowException

    from preprocessing.store import storage

    base = storage.open_location(where)
    try:
        for name in files:
            loc = base.child(name)
            if not storage.exists(loc):
                continue
            with storage.local_copy(loc) as path:
                if os.path.isdir(path):
                    client.log_artifacts(run_id, path, artifact_path=name)
                else:
                    client.log_artifact(run_id, path)
        client.set_terminated(run_id, status)
    except MlflowException as e:
        progress(f"warning: MLflow run {run_id} not completed ({status}): {first_line(e)}")


def first_line(e: BaseException) -> str:
    """An exception's first line (MLflow's messages run to paragraphs)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
