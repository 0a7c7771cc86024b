"""`raylift bench search --config C --algorithms random,optuna --seeds 0,1,2`: does a model-based
search find good recipes in fewer trials than random search?

For every seed and algorithm it runs `raylift tune` on the config as given, with `tune.search` set
to the algorithm (bohb with its hyperband scheduler), `tune.seed` to the seed and the config's
`tune.num_samples` as every run's trial budget. Trials are ordered by when they finished (what a
searcher had seen when it suggested the next one), and each run's best validation metric after k
trials is the best (its `tune.metrics`' first objective, in its direction) over the first k. The
table gives, for each k, the mean ± sample standard deviation over the seeds per algorithm;
`search.png` draws the same curves, beside the mean pose's validation MPJPE measured as trials measure
theirs (`pipelines.train.baseline`). The space must suit every algorithm: `choice`, not `grid`. Figures,
never pass/fail.

A bench takes hours, so it never redoes a search: each one's experiment (`<tune.storage_path>/
<name>_<algorithm>_s<seed>`) is read back when it finished under the same config, resumed
(`raylift tune --resume`) when it was interrupted, and refused in one line when it holds another
config. Benches split over processes or machines that share `tune.storage_path` then combine in
one last call.
"""
from __future__ import annotations

import argparse
import json
import math
from typing import Optional, Sequence

import numpy as np

from pipelines.bench.relations import parse_seeds
from pipelines.config import add_config_arguments, add_location_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, sections=("data", "tune"))
    parser.add_argument("--algorithms", default="random,optuna",
                        help="comma-separated tune.search values to compare (default random,optuna)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated tune.seed values (default 0,1,2)")
    add_location_argument(parser, "--out", role="output", default=None,
                          help="directory for search.md/json/png (default: <tune.storage_path>/<name>_search)")


def parse_algorithms(text: str) -> list[str]:
    """'random,optuna' -> ['random', 'optuna']; known, distinct names (a ValueError naming --algorithms)."""
    from pipelines.tune.search import ALGORITHMS

    names = [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in names if a not in ALGORITHMS]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(f"--algorithms: expected distinct names among {', '.join(ALGORITHMS)}, got {text!r}")
    return names


def best_after(finished: Sequence[tuple[float, float]], mode: str) -> list[float]:
    """Best score after each of k = 1..n trials, from (finish time, best score) pairs in any order;
    a trial without a score (failed) keeps the best so far (NaN until one scores)."""
    sign = 1.0 if mode == "min" else -1.0
    out, best = [], math.inf
    for _, score in sorted(finished):
        if score is not None and not math.isnan(score):
            best = min(best, sign * score)
        out.append(sign * best if math.isfinite(best) else math.nan)
    return out


def trial_scores(experiment_path: str, metric: str, mode: str) -> list[tuple[float, float]]:
    """(finish timestamp, best reported `metric`) of every trial of a Tune experiment."""
    from ray.tune import ExperimentAnalysis

    out = []
    for df in ExperimentAnalysis(experiment_path).trial_dataframes.values():
        values = df[metric].dropna() if metric in df else []
        best = (values.min() if mode == "min" else values.max()) if len(values) else math.nan
        out.append((float(df["timestamp"].max()) if "timestamp" in df and len(df) else math.inf, float(best)))
    return out


def search_state(experiment: str, raw: dict) -> str:
    """"new" (nothing at `experiment`), "finished" (a tune of `raw` that wrote its trials table),
    or "interrupted" (a tune of `raw` without one); a ConfigError when it holds another config."""
    import yaml

    from pipelines.tune.driver import BASE_CONFIG_FILE, RESULT_FILES
    from preprocessing.schema import ConfigError
    from preprocessing.store import storage

    loc = storage.open_location(experiment)
    saved = loc.child(BASE_CONFIG_FILE)
    if not storage.is_file(saved):
        return "new"
    if yaml.safe_load(storage.read_bytes(saved)) != raw:
        raise ConfigError(f"{saved.uri}: this experiment was tuned with another config; remove it, or give the "
                          "bench another name (--set name=...) or tune.storage_path")
    return "finished" if storage.is_file(loc.child(RESULT_FILES[0])) else "interrupted"


def summarise(curves: dict[str, list[list[float]]]) -> dict[str, dict[str, list[float]]]:
    """Per algorithm, from one best-after-k curve per seed: the mean and sample sd at each k."""
    out = {}
    for algorithm, runs in curves.items():
        values = np.array(runs, dtype=np.float64)  # seeds x k
        out[algorithm] = {"mean": np.nanmean(values, axis=0).tolist(),
                          "sd": (np.nanstd(values, axis=0, ddof=1) if len(runs) > 1 else np.zeros(values.shape[1])).tolist()}
    return out


def table(summary: dict[str, dict[str, list[float]]], metric: str, markdown: bool = False) -> str:
    """One row per k, one "mean ± sd" column per algorithm."""
    from pipelines.viz.tables import render_table

    algorithms = list(summary)
    trials = len(next(iter(summary.values()))["mean"])
    rows = [[k + 1, *(f"{summary[a]['mean'][k]:.2f} ± {summary[a]['sd'][k]:.2f}" for a in algorithms)]
            for k in range(trials)]
    return render_table(["trials", *(f"{a}: best {metric} (mean ± sd)" for a in algorithms)], rows, markdown)


def plot(summary: dict[str, dict[str, list[float]]], metric: str, seeds: int,
         baseline: Optional[float] = None) -> bytes:
    """PNG: best metric after k trials per algorithm, the mean with a ± sd band over the seeds;
    `baseline` (the mean pose's) as a dashed line."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipelines.viz.plots import draw_mean_pose

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for algorithm, entry in summary.items():
        mean, sd = np.array(entry["mean"]), np.array(entry["sd"])
        k = np.arange(1, len(mean) + 1)
        line, = ax.plot(k, mean, marker="o", label=algorithm)
        ax.fill_between(k, mean - sd, mean + sd, color=line.get_color(), alpha=0.2)
    draw_mean_pose(ax, baseline)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("trials")
    ax.set_ylabel(f"best {metric}")
    ax.set_title(f"raylift bench search: mean ± sd over {seeds} seed(s)", fontsize=10)
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def run(args: argparse.Namespace) -> int:
    from pipelines.config import config_from_dict
    from pipelines.train.baseline import mean_pose_validation
    from pipelines.tune.driver import experiment_uri, tune_experiment
    from pipelines.tune.search import objectives
    from preprocessing.schema import ConfigError, apply_overrides, load_yaml
    from preprocessing.store import storage

    algorithms, seeds = parse_algorithms(args.algorithms), parse_seeds(args.seeds)
    raw = apply_overrides(load_yaml(args.config), args.overrides)
    base = config_from_dict(raw)
    if base.tune is None:
        raise ConfigError(f"{args.config}: no 'tune:' section (see configs/tune_*.yaml)")
    (metric, mode), *_ = objectives(base).items()
    curves: dict[str, list[list[float]]] = {a: [] for a in algorithms}
    for seed in seeds:
        for algorithm in algorithms:
            tune = {**raw["tune"], "search": algorithm, "seed": seed}
            if algorithm == "bohb":
                tune["scheduler"] = "hyperband"
            run_raw, name = {**raw, "tune": tune}, f"{base.name}_{algorithm}_s{seed}"
            experiment = experiment_uri(base.tune.storage_path, name)
            state = search_state(experiment, run_raw)
            if state != "finished":
                tune_experiment(run_raw, name, base.tune.storage_path, resume=state == "interrupted",
                                progress=lambda _: None)
            curve = best_after(trial_scores(experiment, metric, mode), mode)
            curves[algorithm].append(curve)
            how = {"new": "", "interrupted": " (resumed)", "finished": " (finished before: read back)"}[state]
            print(f"{algorithm} seed {seed}: best {metric} {curve[-1]:.2f} after {len(curve)} trials{how}",
                  flush=True)
    summary = summarise(curves)
    measured = mean_pose_validation(base) if metric == "val_mpjpe" else None
    baseline = None if measured is None else measured[0]
    reference = ("" if measured is None else
                 f"mean pose (the mean training pose for every frame, scored as trials score themselves, "
                 f"windows of data.windows.frames={base.data.windows.frames}): {measured[0]:.2f} mm on the "
                 f"{measured[1]} split")
    protocol = (f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))}); {base.tune.num_samples} trials per run; "
                f"{metric} ({mode}) as the trials report it; trials in the order they finished; sd: sample "
                "standard deviation over seeds")
    print(table(summary, metric))
    if reference:
        print(reference)
    print(f"protocol: {protocol}")
    out = storage.open_location(args.out or f"{base.tune.storage_path.rstrip('/')}/{base.name}_search")
    body = {"config": args.config, "overrides": args.overrides, "metric": metric, "mode": mode, "protocol": protocol,
            "curves": curves, "summary": summary, "mean_pose": baseline}
    storage.write_bytes(out.child("search.json"), (json.dumps(body, indent=1) + "\n").encode())
    md = ["# raylift bench search", "", table(summary, metric, markdown=True), "", *([reference, ""] if reference else []),
          f"protocol: {protocol}", "", "![best after k trials](search.png)", ""]
    storage.write_bytes(out.child("search.md"), "\n".join(md).encode())
    storage.write_bytes(out.child("search.png"), plot(summary, metric, len(seeds), baseline))
    print(f"results: {out.uri}/search.md")
    return 0
