"""`raylift train --config configs/<model>_<dataset>.yaml [--set k=v ...]`: train on Ray Train, then
evaluate the best checkpoint next to the mean-pose baseline.

The driver prepares (or finds, by id) the Parquet windows, checks the run directory
`<train.storage_path>/<name>/` for a checkpoint to resume from, and runs a Ray Train V2
`TorchTrainer` whose workers execute `pipelines.train.worker.train_loop_per_worker`:

- `train.num_workers` workers with `cpus_per_worker` CPUs, `gpus_per_worker` GPUs (`use_gpu`) and
  any custom `resources_per_worker` each; DDP over NCCL on GPUs, gloo on CPUs. `num_workers: 0`
  runs the loop in the driver process (one laptop core, no DDP).
- Each worker streams its shard of the train split through Ray Data (local shuffle, prefetch)
  and scores validation MPJPE (no flip) on its share of the test split's Parquet row groups
  (`pipelines/train/data.py`), so together they count every real test frame exactly once.
- A checkpoint every epoch: Ray keeps the `keep_best` lowest validation MPJPE ones plus the
  latest. Re-running the same command (same name and storage_path) resumes from the latest;
  `FailureConfig(max_failures)` restarts the workers from it after a worker or node dies.
- The run directory collects `metrics.csv`, TensorBoard scalars, `training_curves.png`,
  `config.yaml` and, after training, `eval/results.{md,json}` for the best checkpoint.
- With `tracking:` (or MLFLOW_TRACKING_URI), an MLflow run logs the config, every epoch's metrics
  and those files (pipelines/train/tracking.py).
"""
from __future__ import annotations

import argparse
import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import yaml

from cluster.console import Relay
from models.checkpoint import CheckpointError
from preprocessing.errors import DataError
from pipelines.config import (
    ExperimentConfig, add_config_arguments, add_location_argument, load_config, user_error_in,
)
from preprocessing.schema import ConfigError
from preprocessing.store.dataset import Dataset, is_dataset_id

EVAL_DIR = "eval"
# How the evaluated checkpoint was chosen (train.select), as results state it.
SELECTION_LABELS = {
    "test": "best-on-test epoch (lowest per-epoch validation error on the test split, then scored on it: the papers' habit)",
    "val": "best-on-validation epoch (lowest per-epoch validation error on the held-out validation subjects)",
    "last": "last epoch (no selection)",
}


def validation_split(cfg: ExperimentConfig, dataset: Dataset) -> str:
    """The split per-epoch validation MPJPE is measured on (see train.select)."""
    has_val = dataset.windows_in("val") > 0
    if cfg.train.select == "val" and not has_val:
        raise DataError(f"train.select=val but dataset {dataset.id} has no validation split "
                        "(data.source.val_subjects)")
    return "val" if has_val and cfg.train.select != "test" else "test"
PLOT_NAME = "training_curves.png"
FIT_POLL_S = 0.2  # how often the main thread, waiting for Ray Train's fit(), looks for a Ctrl-C
CONFIG_NAME = "config.yaml"
RUN_LOCK = ".lock"  # the lease of the one live run of a run directory (preprocessing.store.lease)


@dataclass
class TrainOutcome:
    run_uri: str  # the run directory (local path or s3:// URI)
    dataset: Dataset
    best_checkpoint: Optional[str]  # the lowest per-epoch validation score, on whichever split
    latest_checkpoint: Optional[str]
    selected_checkpoint: Optional[str]  # the one `train.select` names: what a run's results score
    history: list[dict] = field(default_factory=list)  # per-epoch metrics (metrics.csv)
    evaluation: Optional[dict] = None  # pipelines.evaluate.protocols result for the best checkpoint


# ----------------------------------------------------------------------------- helpers
def storage_root(storage_path: str) -> str:
    """Absolute local path or s3:// URI (Ray Train wants absolute storage paths)."""
    return storage_path if "://" in storage_path else os.path.abspath(os.path.expanduser(storage_path))


def prepared_dataset(cfg: ExperimentConfig) -> Optional[Dataset]:
    """The dataset `data.dataset` names (a URI, or an id under `data.root`), checked to exist and to
    hold the windows the config's model expects; None when the config names no prepared dataset."""
    from preprocessing.store import storage

    named = cfg.data.dataset
    if named is None:
        return None
    dataset = Dataset.open(storage.join(storage_root(cfg.data.root), named) if is_dataset_id(named)
                           else storage_root(named))
    check_input_kind(cfg, dataset)
    if dataset.kind == "images":
        have_f, want_f = dataset.windows.get("frames"), cfg.data.images.frames
        if have_f != want_f:
            raise ConfigError(f"data.dataset {dataset.uri} holds image windows of f={have_f} frames but "
                              f"data.images.frames is {want_f}: set data.images.frames to match the dataset")
        return dataset
    windows, want = dataset.windows, cfg.data.windows
    have = (windows.get("frames"), windows.get("mode"), bool(windows.get("multiview")))
    if have != (want.frames, want.mode, bool(want.multiview)):
        raise ConfigError(
            f"data.dataset {dataset.uri} holds {have[1]} windows of T={have[0]} (multiview={have[2]}) but "
            f"data.windows asks for {want.mode} T={want.frames} (multiview={bool(want.multiview)}): "
            "set data.windows to match the dataset")
    return dataset


def is_image_config(cfg: ExperimentConfig) -> bool:
    """True when the config's model takes images (mpstr): image datasets, 2D validation."""
    from models.registry import is_image_model, model_class

    return is_image_model(model_class(cfg.model.name))


def check_input_kind(cfg: ExperimentConfig, dataset: Dataset) -> None:
    """Refuse an image model on a keypoint dataset and a lifter on an image dataset."""
    images_in, image_data = is_image_config(cfg), dataset.kind == "images"
    if images_in != image_data:
        raise ConfigError(
            f"dataset {dataset.uri} holds {'image crops' if image_data else '2D keypoint windows'}, but model "
            f"{cfg.model.name!r} takes {'images' if images_in else '2D keypoints'}: give "
            f"{'an image' if images_in else 'a keypoint'} dataset (data.dataset / --data)")


def check_resume(run_uri: str, cfg_dict: dict, joints: int, dataset_id: str) -> Optional[str]:
    """The checkpoint a run resumes from (None for a new run), fully checked before any worker
    starts: another model, T, joint set or dataset, or an unreadable file, is a CheckpointError
    naming the checkpoint."""
    from models.checkpoint import load_state, load_train_state, read_meta
    from pipelines.train.checkpoints import PREFIX, latest, list_checkpoints, ray_registered
    from preprocessing.store.storage import local_copy
    from pipelines.train.loop import check_compatible, check_train_state
    from preprocessing.store import storage

    run = storage.open_location(run_uri)
    registered = ray_registered(run_uri)
    names = [e.base_name for e in storage.list_dir(run) if e.base_name.startswith(PREFIX)
             and (registered is None or e.base_name in registered)]
    found = latest(list_checkpoints(run_uri))
    # A directory named after a later epoch whose meta.json exists but cannot be read is a
    # damaged checkpoint, not an unfinished upload: refuse rather than silently go back.
    for name in sorted(names, reverse=True):
        if found is not None and name <= found.name:
            break
        meta_loc = run.child(name, "meta.json")
        if storage.exists(meta_loc):
            try:
                json.loads(storage.read_bytes(meta_loc))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{meta_loc.uri}: corrupt meta.json ({e}); delete that checkpoint "
                                      "directory to resume from the one before, or use another run name") from None
    if found is None:
        return None
    check_compatible(found.meta, cfg_dict, joints, dataset_id, found.uri)
    with local_copy(found.uri) as d:
        read_meta(d)
        load_state(d)
        check_train_state(load_train_state(d), found.uri)
    return found.uri


def check_start(start_from: str, cfg_dict: dict, joints: int, dataset_id: str) -> str:
    """`start_from`, another run's checkpoint this run continues, fully checked before any worker
    starts: the same model, T, joints, dataset and settings but for `CONTINUE_MAY_CHANGE`."""
    from models.checkpoint import load_state, load_train_state, read_meta
    from pipelines.train.loop import CONTINUE_MAY_CHANGE, check_compatible, check_train_state
    from preprocessing.store.storage import local_copy

    with local_copy(start_from) as d:
        check_compatible(read_meta(d), cfg_dict, joints, dataset_id, start_from, CONTINUE_MAY_CHANGE)
        load_state(d)
        check_train_state(load_train_state(d), start_from)
    return start_from


def data_task_cpus(cfg: ExperimentConfig) -> float:
    """CPUs one Ray Data task of the run's input stream asks for: a window read (`READ_TASK_CPUS`)
    or, for image models, an image decode (`DECODE_TASK_CPUS`). Ray Train workers take theirs
    first, so a run (or a Tune trial) needs room for one of these beside them."""
    from preprocessing.images.readers import DECODE_TASK_CPUS
    from preprocessing.store.parquet import READ_TASK_CPUS

    return DECODE_TASK_CPUS if is_image_config(cfg) else READ_TASK_CPUS


def check_cpus_fit(cfg: ExperimentConfig, cpus: float) -> None:
    """On a Ray of `cpus` CPUs in all, refuse a run whose workers leave no room for a data task:
    its first read would wait forever, with no error (2 workers x 1 CPU on a 2-CPU machine)."""
    tc = cfg.train
    need = tc.num_workers * tc.cpus_per_worker + data_task_cpus(cfg)
    if tc.num_workers and need > cpus:
        raise ConfigError(
            f"train.num_workers={tc.num_workers} x train.cpus_per_worker={tc.cpus_per_worker:g} plus one Ray Data "
            f"task ({data_task_cpus(cfg):g} CPU) need {need:g} CPUs, and this machine's Ray has {cpus:g}: lower "
            "train.cpus_per_worker or train.num_workers")


def _ensure_ray(progress: Callable[[str], None]) -> None:
    import ray

    from cluster.session import init_ray, quiet_ray_data

    quiet_ray_data()  # also for a Ray this process already runs: its console echo stays quiet
    if ray.is_initialized():
        return
    # RAY_ADDRESS's cluster, else a private instance (never a stray `ray start` one). The dashboard
    # stays on: Ray Train's placement-group cleaner queries the state API through it.
    init_ray()
    res = ray.cluster_resources()
    progress(f"Ray: {len(ray.nodes())} node(s), {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs")


def build_trainer(cfg: ExperimentConfig, task: Any, loop_config: dict, run_name: str, storage: str,
                  callbacks: Sequence[Any] = ()):
    """The TorchTrainer for `cfg`: ScalingConfig from `cfg.train`, RunConfig with checkpoint
    retention (best `keep_best` by the task's metric + the latest) and failure recovery, and what
    the task hands Ray Train to split across the workers (`pipelines/train/tasks.py`)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipelines.train.worker import train_loop_per_worker
    from preprocessing.store import storage as st

    tc = cfg.train
    resources = {"CPU": tc.cpus_per_worker, **tc.resources_per_worker}
    if tc.use_gpu:
        resources["GPU"] = tc.gpus_per_worker
    loc = st.open_location(storage)
    run_config = ray.train.RunConfig(
        name=run_name,
        storage_path=loc.path,
        storage_filesystem=None if st.is_local(storage) else loc.fs,
        failure_config=ray.train.FailureConfig(max_failures=tc.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=tc.keep_best, checkpoint_score_attribute=task.metric, checkpoint_score_order="min",
        ),
        callbacks=list(callbacks) or None,
        # Ray Train's own per-report INFO lines would bury raylift's epoch lines; Ray's log files
        # under the session directory keep every level.
        logging_config=ray.train.LoggingConfig(log_level="WARNING"),
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=tc.num_workers, use_gpu=tc.use_gpu, resources_per_worker=resources,
        ),
        run_config=run_config,
        datasets=task.ray_datasets(),
    )


# ----------------------------------------------------------------------------- the run
def run_training(
    cfg: ExperimentConfig,
    dataset: Optional[Dataset] = None,
    run_name: Optional[str] = None,
    storage_path: Optional[str] = None,
    callbacks: Sequence[Any] = (),
    evaluate_after: Optional[bool] = None,
    progress: Callable[[str], None] = print,
    lock_wait_s: float = 0.0,
    start_from: Optional[str] = None,
) -> TrainOutcome:
    """Prepare data (unless `dataset` is given), train (resuming if the run directory has a
    checkpoint), plot, and evaluate the best checkpoint (`evaluate_after`, default train.evaluate).

    `callbacks` are Ray Train user callbacks (e.g. Tune's TuneReportCallback). The run directory's
    lease (`<run>/.lock`) is held throughout; `lock_wait_s` waits that long for a holder to finish
    or be proven gone (a retried Tune trial whose previous attempt died on another node).
    `start_from`: another run's checkpoint to continue when the run directory has none of its own
    (a PBT trial taking over a better trial's state): its weights, optimiser moments, schedule
    position, RNG streams, history and epoch, with this config's `CONTINUE_MAY_CHANGE` values.
    """
    from preprocessing.store import lease, storage

    name = run_name or cfg.name
    root = storage_root(storage_path or cfg.train.storage_path)
    run_uri = storage.join(root, name)
    # One live run per run directory: a second is refused naming the directory and the holder,
    # before it starts Ray or builds a dataset.
    held = lease.acquire(storage.open_location(run_uri).child(RUN_LOCK), f"raylift train of run {name}",
                         wait_s=lock_wait_s)
    try:
        _ensure_ray(progress)
        from cluster.session import private_instance

        if private_instance():  # a cluster may still add nodes; this machine's Ray will not
            import ray

            check_cpus_fit(cfg, float(ray.cluster_resources().get("CPU", 0)))
        task = _task(cfg, dataset, progress)
        from pipelines.train.logs import CSV_NAME, TENSORBOARD_DIR
        from pipelines.train.tracking import train_run

        results = (CONFIG_NAME, CSV_NAME, PLOT_NAME, EVAL_DIR, TENSORBOARD_DIR)  # uploaded as the run's artifacts
        with train_run(cfg, name, run_uri, task.dataset.id, results, progress) as tracking:  # MLflow, when set
            return _train_locked(cfg, cfg.to_dict(), task, name, root, run_uri, [*callbacks, *tracking],
                                 evaluate_after, progress, held, start_from)
    finally:
        held.release()


def _task(cfg: ExperimentConfig, dataset: Optional[Dataset], progress: Callable[[str], None]) -> Any:
    """The training task (`pipelines/train/tasks.py`) on `dataset`, else on the dataset the config
    names (`data.dataset`), else on the one its `data:` section builds (or finds by id)."""
    from pipelines.train.tasks import task_for

    if dataset is None:
        dataset = prepared_dataset(cfg)
    if dataset is None:
        from preprocessing.images.dataset import build_image_dataset
        from preprocessing.keypoints.dataset import prepare_dataset

        dataset = (build_image_dataset if is_image_config(cfg) else prepare_dataset)(cfg.data, progress=progress)
    check_input_kind(cfg, dataset)
    return task_for(cfg, dataset, validation_split(cfg, dataset), progress)


def _train_locked(cfg: ExperimentConfig, cfg_dict: dict, task: Any, name: str, root: str, run_uri: str,
                  callbacks: Sequence[Any], evaluate_after: Optional[bool], progress: Callable[[str], None],
                  held: Any, start_from: Optional[str] = None) -> TrainOutcome:
    """The part of `run_training` that runs while this process holds the run directory's lease."""
    from pipelines.train.checkpoints import best, forget_ray_snapshot, latest, list_checkpoints, select_checkpoint
    from preprocessing.store import storage

    tc, dataset = cfg.train, task.dataset
    resume_from = check_resume(run_uri, cfg_dict, dataset.joints, dataset.id)
    continued = resume_from is None and start_from is not None  # its own checkpoints come first
    if continued:
        resume_from = check_start(start_from, cfg_dict, dataset.joints, dataset.id)
    if tc.num_workers == 0:
        forget_ray_snapshot(run_uri)
    storage.write_bytes(storage.open_location(run_uri).child(CONFIG_NAME),
                        yaml.safe_dump(cfg_dict, sort_keys=False).encode())
    progress(f"run directory: {run_uri}" + (f" ({'continuing' if continued else 'resuming from'} {resume_from})"
                                            if resume_from else ""))

    local_mode = tc.num_workers == 0
    relay = None if local_mode else Relay(progress)  # the workers' lines for the user (cluster/console.py)
    try:
        # Locations, not URIs: their pickled filesystems carry S3 settings to workers started earlier.
        loop_config = {
            "cfg": cfg_dict, "task": task, "run_loc": storage.open_location(run_uri),
            "resume_loc": storage.open_location(resume_from) if resume_from else None,
            "continued": continued,
            "local_mode": local_mode,
            # Ray Train runs no callbacks in local mode; the loop (in this process) calls them itself.
            "local_callbacks": list(callbacks) if local_mode else [],
            "console": relay.queue if relay is not None else None,
        }
        trainer = build_trainer(cfg, task, loop_config, name, root, callbacks)
        held.check()
        _fit(trainer, local_mode)
    except Exception as e:  # Ray Train wraps a worker's error: surface raylift's one-line ones
        user = user_error_in(e)
        if user is None:
            raise
        raise user from None
    finally:
        if relay is not None:
            relay.close()

    checkpoints = list_checkpoints(run_uri)
    best_ckpt, last_ckpt = best(checkpoints), latest(checkpoints)
    history = _history(last_ckpt)
    chosen = select_checkpoint(checkpoints, tc.select)
    outcome = TrainOutcome(run_uri, dataset, best_ckpt.uri if best_ckpt else None,
                           last_ckpt.uri if last_ckpt else None, chosen.uri if chosen else None, history)
    if history:
        from pipelines.viz.plots import training_curves_png

        png = training_curves_png(history, title=f"{cfg.model.name} T={cfg.data.windows.frames} ({name})")
        storage.write_bytes(storage.open_location(run_uri).child(PLOT_NAME), png)
    do_eval = tc.evaluate if evaluate_after is None else evaluate_after
    if do_eval and chosen is not None:
        if dataset.kind == "images":
            from pipelines.evaluate.images2d import evaluate_image_best

            outcome.evaluation = evaluate_image_best(cfg, chosen.uri, dataset, run_uri, progress)
        else:
            outcome.evaluation = evaluate_best(cfg, chosen.uri, dataset, run_uri, progress)
    progress(f"run directory: {run_uri}")
    if best_ckpt is not None:
        score = f"{task.metric} {best_ckpt.score:.2f} {task.unit}"
        progress(f"best checkpoint: {best_ckpt.uri} (epoch {best_ckpt.epoch}, {score})")
    return outcome


def _fit(trainer: Any, local_mode: bool) -> None:
    """`trainer.fit()`, leaving Ctrl-C to raylift. Called in the main thread, Ray Train (V2) installs
    its own SIGINT handler for the run, which aborts it and then ends this process with status 1
    (a SystemExit raised inside `ray.get`), so the CLI could not say "interrupted" or exit with 130.
    There fit() runs in a helper thread while the main thread waits: SIGINT raises KeyboardInterrupt
    in the main thread, and the run's controller and workers, actors of this driver's job, end with
    it. Local mode (the loop in this process, where Ray Train installs no handler) and other threads
    (Tune's trials) call fit() directly."""
    if local_mode or threading.current_thread() is not threading.main_thread():
        trainer.fit()
        return
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # handed to the main thread, which raises it
            failure.append(e)

    helper = threading.Thread(target=fit, name="raylift-train-fit", daemon=True)
    helper.start()
    while helper.is_alive():  # timed waits: a SIGINT that lands on another thread is acted on here
        helper.join(FIT_POLL_S)
    if failure:
        raise failure[0]


def _history(last) -> list[dict]:
    """Per-epoch metrics of the run, from the latest checkpoint's train state."""
    from models.checkpoint import load_train_state
    from preprocessing.store.storage import local_copy

    if last is None:
        return []
    with local_copy(last.uri) as d:
        state = load_train_state(d) or {}
    return [dict(r) for r in state.get("history", [])]


def evaluate_best(cfg: ExperimentConfig, checkpoint_uri: str, dataset: Dataset, run_uri: str,
                  progress: Callable[[str], None] = print) -> dict:
    """Full-protocol evaluation of a checkpoint (with the mean-pose baseline); results are printed
    and written to `<run>/eval/results.{md,json}`. The forward passes run as Ray Data batch
    inference on the training workers' resources (GPU actors, or CPU tasks), never in this
    driver, which on a cluster runs on a head without a GPU."""
    from pipelines.evaluate.batch import evaluate_on_ray, placement_for
    from pipelines.evaluate.results import result_tables, run_summary, write_results
    from preprocessing.store import storage

    from pipelines.evaluate.results import run_labels

    labels = run_labels(cfg.to_dict(), SELECTION_LABELS[cfg.train.select])
    if cfg.eval.protocol == "raylift":
        # The checkpoint was chosen by list_checkpoints, which already parsed this meta.json.
        meta = json.loads(storage.read_bytes(storage.open_location(checkpoint_uri).child("meta.json")))
        result = evaluate_on_ray(storage.open_location(checkpoint_uri), dataset, placement_for(cfg.train),
                                 flip=cfg.eval.flip, batch_size=cfg.eval.batch_size, baseline=True,
                                 bf16=cfg.eval.bf16 and cfg.train.use_gpu, expect_model=cfg.model.name,
                                 expect_frames=cfg.data.windows.frames, progress=progress, labels=labels,
                                 camera_inputs=tuple(getattr(cfg.model, "camera_inputs", ())))
    else:
        # A paper's protocol re-cuts whole test sequences into that paper's windows, so the model
        # runs here, in the driver: on its GPU when it has one, else on its CPUs.
        import torch

        from models.checkpoint import load_model
        from pipelines.evaluate.scoring import evaluate_model
        from preprocessing.store.storage import local_copy

        with local_copy(checkpoint_uri) as d:
            model, meta = load_model(d, expect_model=cfg.model.name, expect_frames=cfg.data.windows.frames)
        device = "cuda" if cfg.train.use_gpu and torch.cuda.is_available() else "cpu"
        result = evaluate_model(model, dataset, flip=cfg.eval.flip, batch_size=cfg.eval.batch_size,
                                device=device, baseline=True, bf16=cfg.eval.bf16 and device == "cuda",
                                protocol=cfg.eval.protocol, labels=labels)
    result = {"checkpoint": checkpoint_uri, "model_name": cfg.model.name, "epoch": meta.get("epoch"),
              "frames_T": int(meta["frames"]), **result}
    progress(f"evaluation of the {SELECTION_LABELS[cfg.train.select]}, epoch {meta.get('epoch')}: {result['protocol']}")
    progress(run_summary(result))
    progress(result_tables(result))
    eval_dir = storage.open_location(run_uri).child(EVAL_DIR)
    write_results(result, eval_dir.uri)
    progress(f"results: {eval_dir.uri}/results.md")
    return result


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    add_location_argument(parser, "--data", role="dataset", metavar="URI_OR_ID",
                        help="train on this prepared dataset (sets data.dataset: a URI, or an id under "
                             "data.root); the source files are not needed")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.data is not None:
        if not args.data.strip():
            raise ConfigError("--data: expected a dataset URI or id, got an empty string")
        cfg.data.dataset = args.data  # taken verbatim: an all-digit id must stay a string
    try:
        run_training(cfg)
    finally:  # failures included: a RayJob's cluster, and its session logs, go soon after the job ends
        ship_run_logs(cfg)
    return 0


def ship_run_logs(cfg: ExperimentConfig) -> None:
    """Copy this job's Ray session logs to `<train.storage_path>/<name>/logs/` as `train.ship_logs`
    says (cluster/logship.py); prints one line and never raises."""
    from cluster.logship import ship_run_logs as ship
    from preprocessing.store import storage

    ship(cfg.train.ship_logs, storage.join(storage_root(cfg.train.storage_path), cfg.name))
