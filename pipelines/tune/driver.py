"""`raylift tune`: Ray Tune searches over any config key, each trial a Ray Train run.

Flow:
1. Load the experiment YAML (with its `tune:` section) and check that every combination of
   candidate values forms a valid config, before anything starts.
2. Prepare the Parquet windows of every distinct `data.*` assignment once, through the data
   cache (by dataset id). Trials with the same windows share them.
3. Each trial applies its sampled values to the base config and runs the training issue's code
   path (`pipelines.train.driver.run_training`) with its own workers/GPUs; Ray Train's
   `TuneReportCallback` forwards every epoch's `val_mpjpe` to Tune, where ASHA stops weak trials.
4. Results: a sorted table (CSV + Markdown) of every trial with its T, depth, parameters, best
   MPJPE, epochs run and wall time; a PNG of MPJPE against T per depth; the best config as a
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
from cluster.session import init_ray
from preprocessing.schema import ConfigError, apply_overrides, apply_values, load_yaml
from preprocessing.store.dataset import Dataset
from pipelines.tune.space import (
    candidate_overrides,
    data_key,
    data_variants,
    param_space,
    parse_space,
)

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
    from preprocessing.store import storage as st

    try:
        mode = config_from_dict(raw).train.ship_logs
    except ConfigError:  # an invalid config failed before Ray started: nothing to copy
        return
    ship_run_logs(mode, st.join(_absolute(storage), name))


def check_space(raw: dict) -> tuple[ExperimentConfig, list]:
    """Validate the base config, the space, and every candidate combination of values."""
    cfg = config_from_dict(raw)
    if cfg.tune is None:
        raise ConfigError("no 'tune:' section in the config")
    if cfg.train.num_workers < 1:
        raise ConfigError("train.num_workers: tune trials need >= 1 Ray Train worker (0 runs in the driver)")
    dims = parse_space(cfg.tune.space)
    for values in candidate_overrides(dims):
        try:
            config_from_dict(apply_values(raw, values))
        except ConfigError as e:
            raise ConfigError(f"tune.space: the combination {values} is not a valid config: {e}") from None
    return cfg, dims


def prepare_datasets(raw: dict, dims: list, progress=print) -> dict[str, Dataset]:
    """Prepare (or find in the cache) the windows of every data.* assignment: data_key -> dataset."""
    from pipelines.train.driver import is_image_config, prepared_dataset
    from preprocessing.keypoints.dataset import prepare_dataset

    base = config_from_dict(raw)
    if base.data.dataset is not None:
        searched = [d.key for d in dims if d.key.startswith("data.")]
        if searched:
            raise ConfigError(f"data.dataset names one prepared dataset, but tune.space searches {searched}: "
                              "drop data.dataset so each variant's windows are prepared")
        dataset = prepared_dataset(base)
        progress(f"dataset for all trials: {dataset.uri}")
        return {data_key({}): dataset}
    datasets = {}
    for values in data_variants(dims):
        cfg = config_from_dict(apply_values(raw, values))
        if is_image_config(cfg):  # image models: each data.images variant (e.g. frames f) is its own dataset
            from preprocessing.images.dataset import build_image_dataset

            dataset = build_image_dataset(cfg.data, progress=progress)
        else:
            dataset = prepare_dataset(cfg.data, progress=progress)
        datasets[data_key(values)] = dataset
        progress(f"dataset for {values or 'all trials'}: {dataset.uri}")
    return datasets


def _trial(config: dict, base_raw: dict, datasets: dict[str, Dataset], train_storage: str) -> None:
    """One Tune trial: the training issue's Ray Train run, reporting every epoch to Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines.train.driver import run_training
    from preprocessing.store.lease import DEFAULT_TTL_S

    overrides = config["overrides"]
    cfg = config_from_dict(apply_values(base_raw, overrides))
    # Failures are retried by Tune (tune.max_failures), which resumes this same Train run from its
    # last checkpoint. Train-level retries must be off here: when Tune stops a trial (ASHA), its
    # workers die first, and a retrying controller would place a new worker group just before it
    # is killed itself, leaking that placement group's CPUs to every later trial.
    cfg.train.max_failures = 0
    # The trial id is stable across trial restarts, so a retried trial resumes its Train run.
    run_training(
        cfg,
        dataset=datasets[data_key(overrides)],
        run_name=f"train-{ray.tune.get_context().get_trial_id()}",
        storage_path=train_storage,
        callbacks=[TuneReportCallback()],
        evaluate_after=False,
        # A retried trial may start before its dead predecessor on another node has lost its
        # run-directory lease: wait out one lease period rather than fail the retry.
        lock_wait_s=DEFAULT_TTL_S + 5,
    )


def trial_needs(cfg: ExperimentConfig) -> dict[str, float]:
    """Resources one trial's Ray Train workers take together (the trial driver's are negligible)."""
    tc = cfg.train
    workers = max(tc.num_workers, 1)
    needs = {"CPU": workers * tc.cpus_per_worker}
    if tc.use_gpu:
        needs["GPU"] = workers * tc.gpus_per_worker
    for name, amount in tc.resources_per_worker.items():
        needs[name] = needs.get(name, 0.0) + workers * amount
    return needs


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


def make_scheduler(cfg: ExperimentConfig):
    """ASHA over the reported `epoch` (Train's own count, which continues at k+1 after a trial is
    retried or resumed, where Tune's training_iteration would restart at 1), or FIFO."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.tune.scheduler != "asha":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="epoch", max_t=cfg.train.epochs,
                         grace_period=cfg.tune.grace_period, reduction_factor=cfg.tune.reduction_factor)


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
    experiment_path = st.join(_absolute(storage_path), name)
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

    from preprocessing.store import storage as st

    if not ray.is_initialized():
        # The dashboard stays on: Train frees stopped trials' resources through its state API.
        init_ray(address)  # quiet unless --verbose (cluster/session.py)
    datasets = prepare_datasets(raw, dims, progress)
    resources, source = intended_resources(cfg, progress)
    concurrency = trial_concurrency(cfg, resources, source)
    per_driver = driver_resources(cfg, {k: float(v) for k, v in ray.cluster_resources().items()})
    progress(f"tune: up to {concurrency} trial(s) at once; each trial driver requests {per_driver}")
    trainable = tune.with_resources(
        tune.with_parameters(_trial, base_raw=raw, datasets=datasets,
                             train_storage=st.join(experiment_path, "train")),
        per_driver,
    )
    scheduler = make_scheduler(cfg)
    if resume:
        if not tune.Tuner.can_restore(experiment_path):
            raise ConfigError(f"{experiment_path}: no Tune experiment state to resume")
        tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_errored=True)
    else:
        # Beside Tune's own experiment state (local or S3), so `--resume` finds it there.
        st.write_bytes(st.open_location(experiment_path).child(BASE_CONFIG_FILE),
                       yaml.safe_dump(raw, sort_keys=False).encode())
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(dims),
            tune_config=tune.TuneConfig(
                metric=cfg.tune.metric, mode="min", scheduler=scheduler,
                num_samples=cfg.tune.num_samples, max_concurrent_trials=concurrency,
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=_absolute(storage_path),
                failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures),
                verbose=1,
            ),
        )
    grid = tuner.fit()
    rows = collect_rows(grid, raw, cfg.tune.metric)
    return write_results(rows, raw, experiment_path)


def _absolute(storage_path: str) -> str:
    return storage_path if "://" in storage_path else str(Path(storage_path).resolve())


def collect_rows(grid, base_raw: dict, metric: str) -> list[dict[str, Any]]:
    """One row per trial: its searched values, T, depth, parameters, best metric, epochs, time, status."""
    from models.registry import build_model, count_parameters

    rows = []
    for result in grid:
        overrides = (result.config or {}).get("overrides", {})
        cfg = config_from_dict(apply_values(base_raw, overrides))
        df = result.metrics_dataframe
        values = df[metric].dropna() if df is not None and metric in df else []
        # Train's own epoch count: a retried or resumed trial restarts Tune's training_iteration
        # (and may redo an epoch whose checkpoint was lost), so rows are not epochs.
        epochs = df["epoch"].dropna() if df is not None and "epoch" in df else []
        trained = int(max(epochs)) if len(epochs) else 0
        # Every supported layout (H36M, MPI-INF-3DHP) has 17 joints.
        params = count_parameters(build_model(cfg.model, frames=cfg.data.windows.frames, joints=17))
        rows.append({
            **overrides,
            "T": cfg.data.windows.frames,
            "depth": getattr(cfg.model, "depth", getattr(cfg.model, "relation_depth", None)),  # mpstr: relations
            "params": params,
            "best_" + metric: float(min(values)) if len(values) else None,
            "epochs": trained,
            "wall_s": round(float(df["time_total_s"].max()), 1) if df is not None and "time_total_s" in df and len(df) else None,
            "status": "ERROR" if result.error else ("STOPPED" if trained < cfg.train.epochs else "DONE"),
            "trial": os.path.basename(result.path) if result.path else "",
        })
    key = "best_" + metric
    rows.sort(key=lambda r: (r[key] is None, r[key] if r[key] is not None else 0.0))
    return rows


RESULT_FILES = ("trials.csv", "trials.md", "mpjpe_vs_frames.png", "best.yaml")


def write_results(rows: list[dict[str, Any]], base_raw: dict, out_uri: str) -> dict[str, Any]:
    """trials.csv, trials.md, mpjpe_vs_frames.png and best.yaml into `out_uri`: the experiment
    directory under `tune.storage_path`, local or an object store, next to Tune's own state (a
    job's working directory on KubeRay is gone when the job ends). Each file is built in a local
    temporary directory and then written whole (atomically on local disk, one PUT on S3)."""
    import tempfile

    from preprocessing.store import storage as st

    out = st.open_location(str(out_uri))
    with tempfile.TemporaryDirectory(prefix="raylift-tune-") as tmp:
        summary = _write_results_local(rows, base_raw, Path(tmp))
        for fname in RESULT_FILES:
            if (Path(tmp) / fname).is_file():
                st.write_bytes(out.child(fname), (Path(tmp) / fname).read_bytes())
    best = out.child("best.yaml").uri if summary["has_best"] else None
    return {"rows": rows, "markdown": summary["markdown"], "dir": out.uri, "best_config": best}


def _write_results_local(rows: list[dict[str, Any]], base_raw: dict, out_dir: Path) -> dict[str, Any]:
    """The result files in a local directory `out_dir`."""
    import pandas as pd

    df = pd.DataFrame(rows)
    # T and depth have their own columns; the searched keys behind them would repeat them.
    table = df.drop(columns=[c for c in (FRAMES_KEY, DEPTH_KEY) if c in df.columns])
    table.to_csv(out_dir / "trials.csv", index=False)
    markdown = _markdown_table(table)
    (out_dir / "trials.md").write_text(markdown + "\n")
    plot_metric_vs_frames(df, out_dir / "mpjpe_vs_frames.png")
    metric_col = [c for c in df.columns if c.startswith("best_")][0]
    finished = df[df[metric_col].notna()]
    if len(finished):
        best = finished.iloc[0]
        overrides = {k: _plain(best[k]) for k in df.columns if "." in k}
        best_raw = apply_values(base_raw, overrides)
        best_raw.pop("tune", None)
        best_raw["name"] = f"{base_raw.get('name', 'experiment')}_best"
        config_from_dict(best_raw)  # the written file must be a valid training config
        (out_dir / "best.yaml").write_text(
            f"# Best trial of raylift tune ({metric_col} = {best[metric_col]:.2f} {metric_unit(metric_col)}): "
            f"train it with `raylift train --config best.yaml`\n"
            + yaml.safe_dump(best_raw, sort_keys=False)
        )
    return {"markdown": markdown, "has_best": bool(len(finished))}


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars (for YAML)."""
    return value.item() if hasattr(value, "item") else value


def _cell(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.2f}" if column.startswith("best_") else f"{value:.1f}" if column == "wall_s" else f"{value:g}"
    return str(value)


def _markdown_table(df) -> str:
    from pipelines.viz.tables import render_table

    cols = list(df.columns)
    return render_table(cols, [[_cell(c, row[c]) for c in cols] for _, row in df.iterrows()], markdown=True)


def metric_unit(metric_col: str) -> str:
    """Unit of a searched metric: pixels for image models' `val_px`, else millimetres."""
    return "px" if metric_col.endswith("_px") else "mm"


def plot_metric_vs_frames(df, path: Path) -> None:
    """Best MPJPE against T, one line per depth; hollow markers for trials ASHA stopped early."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric_col = [c for c in df.columns if c.startswith("best_")][0]
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
    if len(data):
        ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
