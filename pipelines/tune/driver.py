"""`raylift tune`: Ray Tune searches over any config key, each trial a Ray Train run.

Flow:
1. Load the experiment YAML (with its `tune:` section) and check that every combination of
   candidate values forms a valid config, before anything starts.
2. Prepare the Parquet windows of every distinct `data.*` assignment once, through the data
   cache (by dataset id). Trials with the same windows share them.
3. Each trial applies its sampled values to the base config and runs the training issue's code
   path (`pipelines.train.driver.run_training`) with its own workers/GPUs; Ray Train's
   `TuneReportCallback` forwards every epoch's `val_mpjpe` to Tune, where ASHA stops weak trials.
   Which values each trial gets is `tune.search`'s choice (random, optuna, hyperopt or bohb:
   pipelines/tune/search.py).
4. Results: a sorted table (CSV + Markdown) of every trial with its T, depth, parameters, MACs
   per predicted frame, best MPJPE, epochs run, training speed, peak memory and wall time; a PNG
   of MPJPE against T per depth; the Pareto front of MPJPE against MACs (pipelines/tune/pareto.py);
   a report in Markdown and self-contained HTML (pipelines/tune/report.py); the best config as a
   ready-to-train YAML. `raylift tune --resume <experiment dir>` finishes an interrupted search
   without rerunning finished trials; failed trials are retried (`tune.max_failures`) and
   reported, not fatal.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any, Optional

import yaml

from pipelines.config import (
    ExperimentConfig,
    add_config_arguments,
    add_location_argument,
    config_from_dict,
    load_config,
    parse_resources,
)
from cluster.session import init_ray, private_instance
from preprocessing.schema import ConfigError, apply_overrides, apply_values, load_yaml
from preprocessing.store.dataset import Dataset
from pipelines.tune.search import check_search, make_search
from pipelines.tune.space import (
    candidate_overrides,
    data_key,
    data_variants,
    parse_space,
    searched_keys,
    trial_base,
)
from pipelines.tune.table import (markdown_table, mean_pose_line, metric_column, metric_unit, public_columns,
                                  table_cells)

BASE_CONFIG_FILE = "raylift_tune.yaml"  # the resolved base config, stored with the experiment
FRAMES_KEY = "data.windows.frames"
DEPTH_KEY = "model.depth"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, required=False, sections=("data", "tune"))
    add_location_argument(parser, "--resume", role="output", metavar="DIR", help="finish an interrupted tune (its experiment directory)")
    parser.add_argument("--name", help="experiment name (default: the config's name)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    parser.add_argument("--resources", metavar="NAME=N[,NAME=N]",
                        help="the resources the search may use, e.g. GPU=8 (sets tune.resources; sizes "
                             "how many trials run at once)")


def run(args: argparse.Namespace) -> int:
    if bool(args.config) == bool(args.resume):
        raise ConfigError("give exactly one of --config FILE or --resume DIR")
    if args.resume:
        from preprocessing.store import storage as st

        experiment = st.open_location(args.resume)  # local directory or s3:// URI
        base_file = experiment.child(BASE_CONFIG_FILE)
        if not st.is_file(base_file):
            raise ConfigError(f"{args.resume}: not a raylift tune experiment (no {BASE_CONFIG_FILE})")
        raw = yaml.safe_load(st.read_bytes(base_file))
        name = experiment.name
        storage = experiment.uri.rsplit("/", 1)[0]
    else:
        raw = apply_overrides(load_yaml(args.config), args.overrides)
        cfg = load_config(args.config, args.overrides)
        if cfg.tune is None:
            raise ConfigError(f"{args.config}: no 'tune:' section (see configs/tune_*.yaml)")
        name = args.name or cfg.name
        storage = cfg.tune.storage_path
    if args.resources:
        raw.setdefault("tune", {})["resources"] = parse_resources(args.resources)
    try:
        summary = tune_experiment(raw, name, storage, resume=bool(args.resume), address=args.address)
    finally:  # failures included: a RayJob's cluster, and its session logs, go soon after the job ends
        ship_experiment_logs(raw, name, storage)
    print(summary["markdown"])
    print(f"\nresults: {summary['dir']}")
    print(f"best config: {summary['best_config']}")
    return 0


def ship_experiment_logs(raw: dict, name: str, storage: str) -> None:
    """Copy this job's Ray session logs (every trial's workers included) to
    `<tune.storage_path>/<name>/logs/` as the base config's `train.ship_logs` says
    (cluster/logship.py); prints one line and never raises."""
    from cluster.logship import ship_run_logs

    try:
        mode = config_from_dict(raw).train.ship_logs
    except ConfigError:  # an invalid config failed before Ray started: nothing to copy
        return
    ship_run_logs(mode, experiment_uri(storage, name))


def check_space(raw: dict) -> tuple[ExperimentConfig, list]:
    """Validate the base config, the space, and every candidate combination of values."""
    cfg = config_from_dict(raw)
    if cfg.tune is None:
        raise ConfigError("no 'tune:' section in the config")
    if cfg.train.num_workers < 1:
        raise ConfigError("train.num_workers: tune trials need >= 1 Ray Train worker (0 runs in the driver)")
    dims = parse_space(cfg.tune.space)
    check_search(cfg, dims)
    base = trial_base(raw, dims)
    for values in candidate_overrides(dims):
        try:
            config_from_dict(apply_values(base, values))
        except ConfigError as e:
            raise ConfigError(f"tune.space: the combination {values} is not a valid config: {e}") from None
    return cfg, dims


def prepare_datasets(raw: dict, dims: list, progress=print) -> dict[str, Dataset]:
    """Prepare (or find in the cache) the windows of every data.* assignment: data_key -> dataset."""
    from pipelines.train.driver import is_image_config, prepared_dataset
    from preprocessing.keypoints.dataset import prepare_dataset

    base = config_from_dict(raw)
    if base.data.dataset is not None:
        searched = [k for k in searched_keys(dims) if k.startswith("data.")]
        if searched:
            raise ConfigError(f"data.dataset names one prepared dataset, but tune.space searches {searched}: "
                              "drop data.dataset so each variant's windows are prepared")
        dataset = prepared_dataset(base)
        progress(f"dataset for all trials: {dataset.uri}")
        return {data_key({}): dataset}
    datasets = {}
    for values in data_variants(dims):
        cfg = config_from_dict(apply_values(trial_base(raw, dims), values))
        if is_image_config(cfg):  # image models: each data.images variant (e.g. frames f) is its own dataset
            from preprocessing.images.dataset import build_image_dataset

            dataset = build_image_dataset(cfg.data, progress=progress)
        else:
            dataset = prepare_dataset(cfg.data, progress=progress)
        datasets[data_key(values)] = dataset
        progress(f"dataset for {values or 'all trials'}: {dataset.uri}")
    return datasets


def _trial(config: dict, base_raw: dict, datasets: dict[str, Dataset], train_storage: str) -> None:
    """One Tune trial: the training issue's Ray Train run, reporting every epoch to Tune. Under
    PBT (pipelines/tune/pbt.py) every report carries its checkpoint, and a trial Tune restarts from
    a checkpoint (another trial's, or its own after a failure) continues it in a new Train run."""
    import functools

    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines.train.driver import run_training
    from pipelines.tune import pbt
    from preprocessing.store.lease import DEFAULT_TTL_S

    overrides = config["overrides"]
    cfg = config_from_dict(apply_values(base_raw, overrides))
    # Failures are retried by Tune (tune.max_failures), which resumes this same Train run from its
    # last checkpoint. Train-level retries must be off here: when Tune stops a trial (ASHA), its
    # workers die first, and a retrying controller would place a new worker group just before it
    # is killed itself, leaking that placement group's CPUs to every later trial.
    cfg.train.max_failures = 0
    trial_id = ray.tune.get_context().get_trial_id()
    train = functools.partial(
        run_training, cfg, dataset=datasets[data_key(overrides)], storage_path=train_storage, evaluate_after=False,
        # A retried trial may start before its dead predecessor on another node has lost its
        # run-directory lease: wait out one lease period rather than fail the retry.
        lock_wait_s=DEFAULT_TTL_S + 5,
    )
    if cfg.tune.scheduler != "pbt":
        # The trial id is stable across trial restarts, so a retried trial resumes its Train run.
        train(run_name=pbt.segment_name(trial_id, None), callbacks=[TuneReportCallback()])
        return
    pbt.run_segment(trial_id, ray.tune.get_checkpoint(), cfg.train.epochs, train,
                    lambda metrics, checkpoint: ray.tune.report(metrics, checkpoint=checkpoint))


def trial_needs(cfg: ExperimentConfig) -> dict[str, float]:
    """Resources one trial takes: its Ray Train workers together, plus one Ray Data task's CPUs
    (`data_task_cpus`: trials whose workers take every CPU never read a window). The trial
    driver's sliver is negligible."""
    from pipelines.train.driver import data_task_cpus

    tc = cfg.train
    workers = max(tc.num_workers, 1)
    needs = {"CPU": workers * tc.cpus_per_worker + data_task_cpus(cfg)}
    if tc.use_gpu:
        needs["GPU"] = workers * tc.gpus_per_worker
    for name, amount in tc.resources_per_worker.items():
        needs[name] = needs.get(name, 0.0) + workers * amount
    return needs


def check_trial_fits(cfg: ExperimentConfig, per_driver: dict[str, float], cluster: dict[str, float]) -> None:
    """On this machine's private Ray (every resource there will be: no autoscaler adds a node),
    refuse a search whose one trial cannot be placed: the trial's driver starts, and its Train run
    waits forever for workers, without a word. A trial takes its workers and one Ray Data task
    (`trial_needs`), and its driver's request."""
    needs = trial_needs(cfg)
    for key, amount in per_driver.items():
        needs[key] = needs.get(key, 0.0) + amount
    for key, amount in needs.items():
        have = cluster.get(key, 0.0)
        if amount > have + 1e-9:
            tc = cfg.train
            each = ", ".join([f"{tc.cpus_per_worker:g} CPU"] + ([f"{tc.gpus_per_worker:g} GPU"] if tc.use_gpu else [])
                             + [f"{v:g} {k}" for k, v in tc.resources_per_worker.items()])
            raise ConfigError(
                f"one trial needs {amount:g} {key}: train.num_workers={tc.num_workers} worker(s) of {each}, one Ray Data "
                f"task and the trial's driver ({', '.join(f'{v:g} {k}' for k, v in per_driver.items())}); this "
                f"machine's Ray has {have:g}: lower train.num_workers or what each worker asks for")


def trial_concurrency(cfg: ExperimentConfig, resources: dict[str, float], source: str) -> int:
    """Trials whose Train workers fit in `resources` at once: the smallest floor(total / need) over
    the resources a trial needs that `resources` names (Ray's Tune guide sizes
    `max_concurrent_trials` so). `tune.max_concurrent > 0` wins. `source` names where `resources`
    came from, for the error when they name nothing a trial needs."""
    if cfg.tune.max_concurrent > 0:
        return cfg.tune.max_concurrent
    needs = trial_needs(cfg)
    fits = [math.floor(resources[k] / v) for k, v in needs.items() if k in resources and v > 0]
    if not fits:
        raise ConfigError(f"{source} {resources} names none of the resources a trial needs {needs}")
    return max(1, min(fits))


def intended_resources(cfg: ExperimentConfig, progress=print) -> tuple[dict[str, float], str]:
    """The resources concurrency is sized from: `tune.resources` (or `--resources`) when given,
    else what the cluster has now (fine on a fixed cluster or a laptop; an autoscaling cluster
    whose workers start at 0 should say what it will scale to)."""
    if cfg.tune.resources:
        return dict(cfg.tune.resources), "tune.resources"
    import ray

    live = {k: float(v) for k, v in ray.cluster_resources().items()}
    progress(f"tune: concurrency sized from the cluster's resources now ({live.get('CPU', 0):g} CPUs, "
             f"{live.get('GPU', 0):g} GPUs); set tune.resources (or --resources) on an autoscaling cluster")
    return live, "the cluster's resources"


# Ray's pattern for Train inside Tune (docs.ray.io/en/latest/train/user-guides/
# hyperparameter-optimization.html): the trial driver, where Train V2 places the run's controller,
# asks for a custom resource that only on-demand nodes advertise (the heads in cluster/aws.yaml,
# cluster/gcp.yaml and cluster/kuberay/), so a preempted spot GPU node never takes a trial's driver
# with it. Without such a node (a laptop), a sliver of a CPU that takes no core from the workers.
DRIVER_RESOURCE = "raylift_driver"
FALLBACK_DRIVER_RESOURCES = {"CPU": 0.01}


def driver_resources(cfg: ExperimentConfig, cluster: dict[str, float]) -> dict[str, float]:
    """What each trial driver requests: `tune.driver_resources`, else one unit of
    `DRIVER_RESOURCE` when the cluster advertises it, else `FALLBACK_DRIVER_RESOURCES`."""
    if cfg.tune.driver_resources:
        return dict(cfg.tune.driver_resources)
    if cluster.get(DRIVER_RESOURCE, 0) > 0:
        return {DRIVER_RESOURCE: 1.0}
    return dict(FALLBACK_DRIVER_RESOURCES)


def tune_experiment(raw: dict, name: str, storage_path: str, resume: bool = False,
                    address: Optional[str] = None, progress=print) -> dict[str, Any]:
    """Run (or resume) a search; returns the summary (rows, markdown, paths). The experiment
    directory's lease (`<experiment>/.lock`, as a run directory's) is held throughout, taken
    before Ray starts: a second tune (or resume) of the same experiment is refused at once, naming
    the live one, instead of interleaving its trials, tables and Tune state with it."""
    from pipelines.train.driver import RUN_LOCK
    from preprocessing.store import lease
    from preprocessing.store import storage as st

    cfg, dims = check_space(raw)
    experiment_path = experiment_uri(storage_path, name)
    held = lease.acquire(st.open_location(experiment_path).child(RUN_LOCK), f"raylift tune of experiment {name}")
    try:
        return _tune_locked(raw, cfg, dims, name, storage_path, experiment_path, resume, address, progress)
    finally:
        held.release()


def _tune_locked(raw: dict, cfg: ExperimentConfig, dims: list, name: str, storage_path: str, experiment_path: str,
                 resume: bool, address: Optional[str], progress) -> dict[str, Any]:
    """The part of `tune_experiment` that runs while this process holds the experiment's lease."""
    import ray
    from ray import tune

    from pipelines.tune.tracking import tune_run  # loads MLflow: only when tuning
    from preprocessing.store import storage as st

    if not ray.is_initialized():
        # The dashboard stays on: Train frees stopped trials' resources through its state API.
        init_ray(address)  # quiet unless --verbose (cluster/session.py)
    cluster = {k: float(v) for k, v in ray.cluster_resources().items()}
    per_driver = driver_resources(cfg, cluster)
    if private_instance():  # a cluster may still add nodes; this machine's Ray will not
        check_trial_fits(cfg, per_driver, cluster)
    datasets = prepare_datasets(raw, dims, progress)
    resources, source = intended_resources(cfg, progress)
    concurrency = trial_concurrency(cfg, resources, source)
    progress(f"tune: up to {concurrency} trial(s) at once; each trial driver requests {per_driver}")
    base = trial_base(raw, dims)  # a branch's `model.name` replaces the base's model section
    trainable = tune.with_resources(
        tune.with_parameters(_trial, base_raw=base, datasets=datasets,
                             train_storage=st.join(experiment_path, "train")),
        per_driver,
    )
    if resume and not tune.Tuner.can_restore(experiment_path):
        raise ConfigError(f"{experiment_path}: no Tune experiment state to resume")
    with tune_run(cfg, name, experiment_path, (BASE_CONFIG_FILE, *RESULT_FILES), resume, progress) as callbacks:
        if resume:
            tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_errored=True)
        else:
            # Beside Tune's own experiment state (local or S3), so `--resume` finds it there.
            st.write_bytes(st.open_location(experiment_path).child(BASE_CONFIG_FILE),
                           yaml.safe_dump(raw, sort_keys=False).encode())
            search = make_search(cfg, dims, concurrency)  # on resume, Tune restores the searcher it saved
            tuner = tune.Tuner(
                trainable,
                param_space=search.param_space,
                tune_config=search.tune_config(cfg.tune.num_samples),
                run_config=tune.RunConfig(
                    name=name, storage_path=_absolute(storage_path),
                    failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures),
                    callbacks=callbacks,  # MLflow, when `tracking:` is set
                    verbose=1,
                ),
            )
        grid = tuner.fit()
        rows = collect_rows(grid, base, cfg.tune.metric)
        return write_results(rows, base, experiment_path, mean_pose_reference(raw, dims, datasets, cfg.tune.metric))


def _absolute(storage_path: str) -> str:
    return storage_path if "://" in storage_path else str(Path(storage_path).resolve())


def experiment_uri(storage_path: str, name: str) -> str:
    """Where experiment `name` keeps Tune's state and raylift's results: `<storage_path>/<name>`
    (a local path made absolute, as Tune wants it)."""
    from preprocessing.store import storage as st

    return st.join(_absolute(storage_path), name)


def mean_pose_reference(raw: dict, dims: list, datasets: dict[str, Dataset], metric: str) -> Optional[dict[str, Any]]:
    """The trivial baseline beside a search's trials: {"val_mpjpe", "split", "frames"} of the mean
    pose (pipelines/train/baseline.py) on the first prepared dataset's validation windows, under
    that variant's config (its T, and its model's seq2seq or seq2frame windows), T named beside
    it: another T's windows may count edge frames differently. None unless the trials are scored
    by val_mpjpe (image models report pixels)."""
    from pipelines.train.baseline import mean_pose_validation

    if metric != "val_mpjpe":
        return None
    values = data_variants(dims)[0]
    cfg = config_from_dict(apply_values(trial_base(raw, dims), values))
    measured = mean_pose_validation(cfg, datasets[data_key(values)])
    return None if measured is None else {"val_mpjpe": measured[0], "split": measured[1],
                                          "frames": cfg.data.windows.frames}


def _reported(df, key: str):
    """A reported metric's non-missing values over a trial's reports (empty when never reported)."""
    return df[key].dropna() if df is not None and key in df else []


def collect_rows(grid, base_raw: dict, metric: str) -> list[dict[str, Any]]:
    """One row per trial: its searched values, T, depth, parameters, forward MACs per predicted
    frame (as the trial reported it, else counted from its config: models/cost.py), best metric,
    epochs, training speed in predicted frames per second (mean over its epochs), peak memory (the
    most of any epoch; pipelines/train/worker.py says whose), time, status; and, under the private
    key "_curve", its metric per epoch [(epoch, value), ...] for the report's learning curves."""
    from models.cost import macs_per_frame
    from models.registry import build_model, count_parameters

    rows = []
    for result in grid:
        overrides = (result.config or {}).get("overrides", {})
        cfg = config_from_dict(apply_values(base_raw, overrides))
        df = result.metrics_dataframe
        values = _reported(df, metric)
        # Train's own epoch count: a retried or resumed trial restarts Tune's training_iteration
        # (and may redo an epoch whose checkpoint was lost), so rows are not epochs.
        epochs = _reported(df, "epoch")
        trained = int(max(epochs)) if len(epochs) else 0
        # Every supported layout (H36M, MPI-INF-3DHP) has 17 joints.
        net = build_model(cfg.model, frames=cfg.data.windows.frames, joints=17)
        macs = _reported(df, "macs_per_frame")
        speed, memory = _reported(df, "train_frames_per_s"), _reported(df, "peak_memory_mb")
        # A redone epoch reports twice: its last report stands.
        curve = (df[["epoch", metric]].dropna().drop_duplicates("epoch", keep="last").sort_values("epoch")
                 if len(values) and len(epochs) else None)
        rows.append({
            **overrides,
            "T": cfg.data.windows.frames,
            "depth": getattr(cfg.model, "depth", getattr(cfg.model, "relation_depth", None)),  # mpstr: relations
            "params": count_parameters(net),
            "macs_per_frame": float(macs.iloc[-1]) if len(macs) else macs_per_frame(net, cfg.data.windows.frames, 17),
            "best_" + metric: float(min(values)) if len(values) else None,
            "epochs": trained,
            "train_frames_per_s": float(speed.mean()) if len(speed) else None,
            "peak_memory_mb": float(memory.max()) if len(memory) else None,
            "wall_s": round(float(df["time_total_s"].max()), 1) if df is not None and "time_total_s" in df and len(df) else None,
            "status": "ERROR" if result.error else ("STOPPED" if trained < cfg.train.epochs else "DONE"),
            "trial": os.path.basename(result.path) if result.path else "",
            "_curve": [] if curve is None else [(int(e), float(v)) for e, v in curve.itertuples(index=False)],
        })
    key = "best_" + metric
    rows.sort(key=lambda r: (r[key] is None, r[key] if r[key] is not None else 0.0))
    return rows


# best.yaml only when a trial scored; importances.png only for an Optuna search (report.py).
RESULT_FILES = ("trials.csv", "trials.md", "mpjpe_vs_frames.png", "pareto.md", "pareto.png", "learning_curves.png",
                "importances.png", "report.md", "report.html", "best.yaml")


def write_results(rows: list[dict[str, Any]], base_raw: dict, out_uri: str,
                  mean_pose: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """trials.csv, trials.md, mpjpe_vs_frames.png, the Pareto front (pareto.md, pareto.png), the
    report (report.md, report.html and its images) and best.yaml into `out_uri`; `mean_pose`
    (`mean_pose_reference`) under the tables and as a dashed line in the plots. `out_uri`: the experiment
    directory under `tune.storage_path`, local or an object store, next to Tune's own state (a
    job's working directory on KubeRay is gone when the job ends). Each file is built in a local
    temporary directory and then written whole (atomically on local disk, one PUT on S3)."""
    import tempfile

    from preprocessing.store import storage as st

    out = st.open_location(str(out_uri))
    with tempfile.TemporaryDirectory(prefix="raylift-tune-") as tmp:
        summary = _write_results_local(rows, base_raw, Path(tmp), mean_pose)
        for fname in RESULT_FILES:
            if (Path(tmp) / fname).is_file():
                st.write_bytes(out.child(fname), (Path(tmp) / fname).read_bytes())
    best = out.child("best.yaml").uri if summary["has_best"] else None
    return {"rows": rows, "markdown": summary["markdown"], "dir": out.uri, "best_config": best, "mean_pose": mean_pose}


def _write_results_local(rows: list[dict[str, Any]], base_raw: dict, out_dir: Path,
                         mean_pose: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The result files in a local directory `out_dir`."""
    import pandas as pd

    from pipelines.tune.pareto import write_pareto
    from pipelines.tune.report import write_report

    df = pd.DataFrame(rows)
    # T and depth have their own columns; the searched keys behind them would repeat them.
    table = public_columns(df).drop(columns=[c for c in (FRAMES_KEY, DEPTH_KEY) if c in df.columns])
    table.to_csv(out_dir / "trials.csv", index=False)
    reference = mean_pose["val_mpjpe"] if mean_pose else None
    markdown = markdown_table(*table_cells(table)) + (f"\n\n{mean_pose_line(mean_pose)}" if mean_pose else "")
    (out_dir / "trials.md").write_text(markdown + "\n")
    plot_metric_vs_frames(df, out_dir / "mpjpe_vs_frames.png", reference)
    metric_col = metric_column(df.columns)
    front = write_pareto(rows, metric_col, out_dir, reference)
    finished = df[df[metric_col].notna()]
    if len(finished):
        best = finished.iloc[0]
        # The trial's own overrides: with branches, the table's columns are the union of several
        # key sets, and a key the best trial lacks is NaN there.
        overrides = {k: _plain(v) for k, v in rows[int(finished.index[0])].items() if "." in k}
        best_raw = apply_values(base_raw, overrides)
        best_raw.pop("tune", None)
        best_raw["name"] = f"{base_raw.get('name', 'experiment')}_best"
        config_from_dict(best_raw)  # the written file must be a valid training config
        (out_dir / "best.yaml").write_text(
            f"# Best trial of raylift tune ({metric_col} = {best[metric_col]:.2f} {metric_unit(metric_col)}): "
            f"train it with `raylift train --config best.yaml`\n"
            + yaml.safe_dump(best_raw, sort_keys=False)
        )
    write_report(rows, table, base_raw, out_dir, front, mean_pose)  # last: it shows the files above
    return {"markdown": markdown, "has_best": bool(len(finished))}


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars (for YAML)."""
    return value.item() if hasattr(value, "item") else value


def plot_metric_vs_frames(df, path: Path, mean_pose: Optional[float] = None) -> None:
    """Best MPJPE against T, one line per depth; hollow markers for trials ASHA stopped early; the
    mean pose's score dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipelines.viz.plots import draw_mean_pose

    metric_col = metric_column(df.columns)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    data = df[df[metric_col].notna()]
    for depth, group in sorted(data.groupby(data["depth"].fillna(-1)), key=lambda g: g[0]):
        best = group.loc[group.groupby("T")[metric_col].idxmin()].sort_values("T")
        label = f"depth {int(depth)}" if depth >= 0 else "model"
        line, = ax.plot(best["T"], best[metric_col], label=label)
        done = best["status"] == "DONE"
        ax.scatter(best["T"][done], best[metric_col][done], color=line.get_color(), zorder=3)
        ax.scatter(best["T"][~done], best[metric_col][~done], facecolors="white",
                   edgecolors=line.get_color(), zorder=3)
    frames = sorted(data["T"].unique()) if len(data) else []
    ax.set_xscale("log")
    ax.set_xticks(frames, [str(int(t)) for t in frames])
    ax.minorticks_off()
    ax.set_xlabel("frames T")
    ax.set_ylabel(f"best {metric_col[len('best_'):]} ({metric_unit(metric_col)})")
    ax.set_title("Tune: best validation MPJPE by T (hollow: stopped early)", fontsize=10)
    draw_mean_pose(ax, mean_pose)
    if len(data) or mean_pose is not None:
        ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
