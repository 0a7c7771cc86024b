"""Population-based training (`tune.scheduler: pbt`): Ray Tune's `PopulationBasedTraining` over
raylift trials, each a Ray Train run.

```yaml
tune:
  scheduler: pbt
  num_samples: 4                 # the population: trials that train at the same time
  perturbation_interval: 1       # epochs between exploit/explore decisions
  quantile_fraction: 0.25        # the bottom quarter copies the top quarter
  resample_probability: 0.25     # explore: resample from the space, else x0.8 / x1.2 (Tune's rule)
  space:
    train.lr: {loguniform: [1.0e-4, 3.0e-3]}
    train.weight_decay: {uniform: [0.0, 0.1]}
    model.drop_path_rate: {uniform: [0.0, 0.2]}
```

The space gives each trial's first values and is what PBT perturbs. Only the keys a running
trial can change are allowed (`pipelines.train.loop.CONTINUE_MAY_CHANGE`): the learning rate,
the weight decay and the drop-path rate. Everything else shapes the weights (width, depth, T) or
the data, which a copied checkpoint could not carry.

How a trial copies another (exploit), exactly:
1. Every epoch, Ray Train reports the epoch's checkpoint with its metrics. `CheckpointReport` (a
   Train callback) hands both to the trial function, which reports them to Tune
   (`forward_reports`). Tune keeps a copy of the checkpoint in the trial's own directory.
2. When PBT decides that trial A copies trial B, Tune restarts A with B's last checkpoint and
   A's perturbed values. A starts a new Train run (`segment_name`) that continues that
   checkpoint (`run_training(start_from=...)`); a checkpoint of the last epoch leaves nothing to
   train, and A reports it as it is (`run_segment`). Weights, optimiser moments, schedule position,
   RNG streams, history and epoch are B's. Its next epoch's data order is the one B's own next
   epoch would see, since rows are permuted by (seed, epoch). Only the perturbed values are A's
   (tests/test_continue_run.py: with unchanged values the continued epoch equals B's bit for bit).
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional

from ray.train import UserCallback

from preprocessing.schema import ConfigError

def check_pbt(cfg: Any, dims: list) -> None:
    """One line for a PBT setup Tune cannot run or a trial could not honour."""
    from pipelines.train.loop import CONTINUE_MAY_CHANGE

    tc = cfg.tune
    if getattr(tc, "search", "random") != "random":
        raise ConfigError(f"tune.scheduler pbt samples its own population: tune.search must be random, got {tc.search!r}")
    for d in dims:
        if d.key not in CONTINUE_MAY_CHANGE:
            raise ConfigError(f"tune.space.{d.key}: population-based training can only change "
                              f"{', '.join(CONTINUE_MAY_CHANGE)} while a trial runs (a copied checkpoint "
                              "fixes the rest)")
        if d.kind == "grid":
            raise ConfigError(f"tune.space.{d.key}: pbt samples and perturbs values: use choice, uniform or "
                              "loguniform, not grid")
    if tc.num_samples < 2:
        raise ConfigError(f"tune.num_samples: pbt needs a population of >= 2 trials, got {tc.num_samples}")
    if tc.perturbation_interval < 1:
        raise ConfigError(f"tune.perturbation_interval: expected >= 1 epoch, got {tc.perturbation_interval}")


def make_pbt(cfg: Any, dims: list) -> Any:
    """Tune's PBT over the reported `epoch` (Train's own count, continued across copies)."""
    from ray.tune.schedulers import PopulationBasedTraining

    check_pbt(cfg, dims)
    tc = cfg.tune
    return PopulationBasedTraining(
        time_attr="epoch",
        perturbation_interval=tc.perturbation_interval,
        quantile_fraction=tc.quantile_fraction,
        resample_probability=tc.resample_probability,
        hyperparam_mutations={"overrides": {d.key: d.to_tune() for d in dims}},
    )


class CheckpointReport(UserCallback):
    """A Ray Train callback (runs in the run's controller) that hands every report, with its
    checkpoint, to the trial function through a Ray queue: Train's own `TuneReportCallback`
    forwards metrics only, and PBT can only copy a trial that reported a checkpoint to Tune."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
        self.queue.put((dict(metrics[0]), checkpoint))


def forward_reports(train: Callable[[list], Any], report: Callable[[dict, Any], None]) -> None:
    """Run `train(callbacks)` in a helper thread and pass each of its Train reports (metrics and
    checkpoint) to `report` here, in the trial function's thread, in order; re-raise its error."""
    from ray.util.queue import Queue

    queue = Queue(actor_options={"num_cpus": 0})
    done = None  # the end of the reports (items cross a Ray queue: compared by value, not identity)
    failure: list[BaseException] = []

    def work() -> None:
        try:
            train([CheckpointReport(queue)])
        except BaseException as e:  # handed to the trial function, which raises it
            failure.append(e)
        finally:
            queue.put(done)

    helper = threading.Thread(target=work, name="raylift-pbt-train", daemon=True)
    helper.start()
    try:
        while (item := queue.get()) is not done:
            report(*item)
    finally:
        helper.join()
        queue.shutdown()
    if failure:
        raise failure[0]


def run_segment(trial_id: str, start: Any, epochs: int, train: Callable[..., Any],
                report: Callable[[dict, Any], None]) -> None:
    """One stretch of a PBT trial: `train` (`run_training` with the trial's config) from `start`,
    the Tune checkpoint Tune restarted the trial with (None for a new trial), each report passed to
    `report(metrics, checkpoint)`.

    Asynchronous PBT may hand a trial a checkpoint of the last epoch: its donor reported its last
    epoch first, or Tune paused the trial right after its own last report. Nothing is left to
    train, so the trial reports that epoch's metrics (the checkpoint's meta.json) with the
    checkpoint itself. Its record then ends with the state it holds, as every other trial's does,
    and trials.csv counts its epochs from that state (without it, a trial that copied a finished
    one ended on its own earlier epoch and was listed as STOPPED)."""
    start_uri = checkpoint_uri(start) if start is not None else None
    meta = checkpoint_meta(start_uri) if start_uri else None
    if meta is not None and int(meta["epoch"]) >= epochs:
        report({k: float(v) for k, v in meta["metrics"].items()}, start)
        return
    run_name = segment_name(trial_id, int(meta["epoch"]) if meta else None)
    forward_reports(lambda callbacks: train(run_name=run_name, callbacks=callbacks, start_from=start_uri), report)


def checkpoint_meta(uri: str) -> dict:
    """meta.json of a raylift checkpoint directory (local or an object store), without its weights."""
    import json

    from preprocessing.store import storage as st

    return json.loads(st.read_bytes(st.open_location(uri).child("meta.json")))


def checkpoint_uri(checkpoint: Any) -> str:
    """A Tune/Train checkpoint's location as a URI raylift's storage layer opens (a local path,
    or `<scheme>://bucket/key` for an object store)."""
    import pyarrow.fs as pafs

    if isinstance(checkpoint.filesystem, pafs.LocalFileSystem):
        return checkpoint.path
    scheme = {"gcs": "gs"}.get(checkpoint.filesystem.type_name, checkpoint.filesystem.type_name)  # pyarrow's name
    return f"{scheme}://{checkpoint.path}"


def segment_name(trial_id: str, start_epoch: Optional[int]) -> str:
    """The Train run name of one stretch of a trial: `train-<id>` at first, `train-<id>-from-e<k>`
    once it continues a checkpoint of epoch k (its own after a retry, or another trial's)."""
    return f"train-{trial_id}" if start_epoch is None else f"train-{trial_id}-from-e{start_epoch:04d}"
