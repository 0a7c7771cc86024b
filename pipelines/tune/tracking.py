"""MLflow tracking of `raylift tune` (the `tracking:` section; pipelines/train/tracking.py has the
settings, the stores and how to browse them).

- One parent run per search, named after it: the base config as params (dotted keys, `tune.space.*`
  included), tags `raylift.tune_dir` (the experiment directory) and `raylift.git_commit`; finished
  after the results are written, with the result files (tables, plots, report, best.yaml, the base
  config) as artifacts; FAILED or KILLED (with what results exist) when the search fails or is
  stopped. A resumed search finishes the parent it started (found by `raylift.tune_dir`).
- One child run per trial (tags `mlflow.parentRunId`, which nests it in MLflow's UI, and
  `raylift.parent_run_id`), logged by Ray's `MLflowLoggerCallback` from the Tune driver: the trial's
  searched values as params (`overrides/<dotted key>`; a PBT trial's later values as tags
  `raylift.values.<key>`) and every epoch row its Ray Train run reports
  as metrics, step = Tune's iteration (the epoch, unless the trial was retried; the `epoch` metric
  is the epoch always). A trial restored by `--resume` starts a new child run.
"""
from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.result import AUTO_RESULT_KEYS, DONE, TRAINING_ITERATION

from pipelines.train.tracking import ENV_URI, TAG_COMMIT, Target, close_run, config_params, open_run, target
from preprocessing.version import source_commit

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from pipelines.config import ExperimentConfig

TAG_TUNE_DIR = "raylift.tune_dir"  # on a search's parent run only
TAG_PARENT = "raylift.parent_run_id"
MLFLOW_PARENT = "mlflow.parentRunId"  # what nests a run under another in MLflow's UI


class TrialRuns(MLflowLoggerCallback):
    """Ray's MLflowLoggerCallback (a run per trial, its config as params, its results as metrics),
    logging of each result what the trial's Train run reported (the epoch row), not Tune's
    bookkeeping (`AUTO_RESULT_KEYS`: the config's values again, pid, timestamps)."""

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        row = {k: v for k, v in result.items() if k not in AUTO_RESULT_KEYS and k != DONE}
        super().log_trial_result(iteration, trial, {**row, TRAINING_ITERATION: result[TRAINING_ITERATION]})

    def setup(self, *args: Any, **kwargs: Any) -> None:
        # Ray's setup calls mlflow.set_tracking_uri, which MLflow 3 also writes into this process's
        # MLFLOW_TRACKING_URI: without putting it back, every later run in the process is tracked.
        self._environment = os.environ.get(ENV_URI)
        super().setup(*args, **kwargs)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        super().on_experiment_end(trials, **info)
        if self._environment is None:
            os.environ.pop(ENV_URI, None)
        else:
            os.environ[ENV_URI] = self._environment

    def log_trial_start(self, trial: Any) -> None:
        """A run per trial, its searched values (`overrides`, dotted keys) as params, logged once.
        A trial restarted with other values (PBT's explore) cannot change its params (MLflow
        refuses), so it records them as tags `raylift.values.<key>`. A branched space's raw labels
        (`search`) are not params: MLflow refuses their brackets."""
        values = {f"overrides/{k}": v for k, v in (trial.config.get("overrides") or {}).items()}
        if trial not in self._trial_runs:
            run = self.mlflow_util.start_run(tags={**self.tags, "trial_name": str(trial)}, run_name=str(trial))
            self._trial_runs[trial] = run.info.run_id
            self.mlflow_util.log_params(run_id=run.info.run_id, params_to_log=values)
            return
        from mlflow import MlflowClient

        client = MlflowClient(self.tracking_uri)
        for key, value in values.items():
            client.set_tag(self._trial_runs[trial], f"raylift.values.{key.removeprefix('overrides/')}", str(value))


@contextlib.contextmanager
def tune_run(cfg: "ExperimentConfig", name: str, experiment_uri: str, files: Sequence[str], resume: bool,
             progress: Callable[[str], None] = print) -> Iterator[list[TrialRuns]]:
    """Track search `name` in the block: yields the Tune callbacks to add (none when tracking is off,
    or on `--resume`, whose restored Tuner keeps its own), and on leaving uploads `files` of the
    experiment directory (the search's results; missing ones skipped) to the search's parent run
    and ends it: FINISHED, FAILED on an exception, KILLED on Ctrl-C (as `train_run` ends a run). A
    new search opens its parent; a resumed one ends the parent it started (found by
    `raylift.tune_dir`), else a new one."""
    found = target(cfg.tracking, name)
    if found is None:
        yield []
        return
    if resume:
        client, parent = _find_parent(found, experiment_uri) or _open_parent(found, cfg, name, experiment_uri)
        callbacks = []
    else:
        client, parent = _open_parent(found, cfg, name, experiment_uri)
        tags = {MLFLOW_PARENT: parent, TAG_PARENT: parent, TAG_COMMIT: source_commit()}
        callbacks = [TrialRuns(tracking_uri=found.uri, experiment_name=found.experiment, tags=tags)]
    uploads = files if found.artifacts else ()
    try:
        yield callbacks
    except BaseException as e:
        close_run(client, parent, experiment_uri, uploads, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED",
                  progress)
        raise
    close_run(client, parent, experiment_uri, uploads, "FINISHED", progress)
    progress(f"MLflow: search {name!r} in run {parent} of experiment {found.experiment!r} at {found.uri}")


def _open_parent(found: Target, cfg: "ExperimentConfig", name: str,
                 experiment_uri: str) -> tuple["MlflowClient", str]:
    tags = {TAG_TUNE_DIR: experiment_uri, TAG_COMMIT: source_commit()}
    return open_run(found, name, tags, config_params(cfg.to_dict()))


def _find_parent(found: Target, experiment_uri: str) -> Optional[tuple["MlflowClient", str]]:
    """The latest parent run of the search in `experiment_uri`, if the experiment has one."""
    from mlflow import MlflowClient

    client = MlflowClient(found.uri)
    experiment = client.get_experiment_by_name(found.experiment)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], f"tags.`{TAG_TUNE_DIR}` = '{experiment_uri}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return (client, runs[0].info.run_id) if runs else None
