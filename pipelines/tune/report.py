"""A search's report, `report.md` and `report.html`, written beside its other results files.

Sections: the protocol (what was trained, for how long, scored how, stopped by what), the trials
table, the best configuration, learning curves of the best trials (`learning_curves.png`),
accuracy against cost (`pareto.png` and the front's table, pipelines/tune/pareto.py), the best
metric by window length (`mpjpe_vs_frames.png`) and, for an Optuna search (`tune.search: optuna`),
parameter importances (`importances.png`, pipelines/tune/importance.py). The Markdown links the
PNG files next to it; the HTML is self-contained, its images embedded as base64 PNGs, so it can be
mailed or opened from an object store.

Per-epoch curves come from the rows' private "_curve" key: [(epoch, metric), ...] per trial
(`pipelines.tune.driver.collect_rows`, from each Tune result's metrics dataframe).
"""
from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import pandas as pd

from pipelines.config import TrainConfig, TuneConfig
from pipelines.tune.importance import param_importances, plot_importances
from pipelines.tune.pareto import front_table, trial_label
from pipelines.tune.table import html_table, markdown_table, mean_pose_line, metric_column, metric_unit, table_cells

TOP_K = 5  # trials drawn in the learning curves
CURVES_FILE = "learning_curves.png"
IMPORTANCES_FILE = "importances.png"


@dataclass
class Section:
    """One report section: a title, what it shows (one paragraph), then any of a table (header,
    cells), a code block, an image file in the output directory."""

    title: str
    text: str
    table: Optional[tuple[list[str], list[list[str]]]] = None
    code: Optional[str] = None
    image: Optional[str] = None


def _score(row: Mapping[str, Any], metric_col: str) -> float:
    value = row.get(metric_col)
    return math.nan if value is None else float(value)


def plot_curves(rows: Sequence[Mapping[str, Any]], metric_col: str, top: Sequence[int], path: Path,
                mean_pose: Optional[float] = None) -> None:
    """The validation metric per epoch of the trials `top` (indices into `rows`); dashed: stopped
    early; the mean pose's score a grey dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from pipelines.viz.plots import draw_mean_pose

    metric = metric_col[len("best_"):]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for i in top:
        epochs, values = zip(*rows[i]["_curve"])
        done = rows[i].get("status") == "DONE"
        line, = ax.plot(epochs, values, marker="o", linestyle="-" if done else "--",
                        label=f"#{i + 1} {trial_label(rows[i])}")  # its row in the trials table
        if not done:
            line.set_markerfacecolor("white")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    draw_mean_pose(ax, mean_pose)
    if top:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no trial reported per-epoch metrics", transform=ax.transAxes, ha="center")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{metric.replace('_', ' ')} ({metric_unit(metric_col)})")
    ax.set_title(f"{metric} per epoch, the {len(top)} best trials (dashed, hollow: stopped early)", fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def protocol(base_raw: Mapping[str, Any], metric_col: str, trials: int) -> str:
    """How every trial was trained and scored, in one paragraph."""
    train, tune, defaults = base_raw.get("train", {}), base_raw.get("tune", {}), TuneConfig()
    metric = metric_col[len("best_"):]
    epochs = train.get("epochs", TrainConfig().epochs)
    search = tune.get("search", defaults.search)
    search = "Tune's grid/random variants" if search == "random" else search
    halving = f"reduction factor {tune.get('reduction_factor', defaults.reduction_factor)}"
    stopper = {"asha": f"ASHA (grace period {tune.get('grace_period', defaults.grace_period)} epoch(s), {halving})",
               "hyperband": f"BOHB's HyperBand ({halving})"}.get(tune.get("scheduler", defaults.scheduler))
    if stopper:
        stopping = (f"{stopper} stops weak trials early: STOPPED in the tables, hollow markers and dashed "
                    "curves in the plots; their scores come from fewer epochs.")
    elif tune.get("scheduler") == "pbt":
        stopping = (f"Population-based training: every {tune.get('perturbation_interval', defaults.perturbation_interval)} "
                    f"epoch(s) the bottom {tune.get('quantile_fraction', defaults.quantile_fraction):g} of the trials "
                    "continue a top trial's checkpoint with perturbed values; a trial's row shows its last values, and "
                    "its score is the best epoch it reported before or after a copy.")
    else:
        stopping = "No early stopping (FIFO): every trial runs all its epochs."
    return (f"{trials} trial(s), searched by {search}. Each trains for up to {epochs} epoch(s) (`train.epochs`) and "
            f"reports `{metric}` ({metric_unit(metric_col)}, lower is better) after every epoch on the validation "
            "split (the dataset's validation subjects, else its test split: `train.select`); a trial's score "
            f"`{metric_col}` is its best epoch's. {stopping}")


def sections(rows: Sequence[Mapping[str, Any]], table: pd.DataFrame, base_raw: Mapping[str, Any],
             out_dir: Path, front: Sequence[int], mean_pose: Optional[Mapping[str, Any]] = None) -> list[Section]:
    """The report's sections; writes the images they show that are not already in `out_dir`.
    `mean_pose` (`pipelines.tune.driver.mean_pose_reference`): the trivial baseline, under the
    trials table and dashed in the learning curves."""
    metric_col = metric_column(table.columns)
    metric = metric_col[len("best_"):]
    reference = mean_pose["val_mpjpe"] if mean_pose else None
    scored = sorted((i for i, r in enumerate(rows) if math.isfinite(_score(r, metric_col))),
                    key=lambda i: _score(rows[i], metric_col))
    out = [Section("Trials", "Every trial, best score first. `macs_per_frame`: forward multiply-accumulates per "
                   "predicted frame (one window, batch 1; T frames for seq2seq models, 1 for seq2frame); "
                   "`train_frames_per_s`: predicted frames trained per second, mean over the epochs; "
                   "`peak_memory_mb`: the most memory an epoch took (CUDA: torch's allocations; CPU: the worker "
                   "process's peak resident set); `wall_s`: the trial's time in Tune."
                   + (f" {mean_pose_line(mean_pose)}" if mean_pose else ""), table=table_cells(table))]
    best = out_dir / "best.yaml"
    out.append(Section("Best configuration",
                       "The best trial's configuration, ready to train (`raylift train --config best.yaml`)."
                       if best.is_file() else "No trial reported a score: there is no best configuration.",
                       code=best.read_text() if best.is_file() else None))
    top = [i for i in scored if rows[i].get("_curve")][:TOP_K]
    plot_curves(rows, metric_col, top, out_dir / CURVES_FILE, reference)
    out.append(Section("Learning curves", f"`{metric}` on the validation split after every epoch, for the {len(top)} "
                       f"best-scored trial(s) with per-epoch metrics (of {len(rows)}; #n: the trial's row in the table "
                       "above); dashed: stopped early" + ("; grey dashed: the mean pose." if mean_pose else "."),
                       image=CURVES_FILE))
    out.append(Section("Accuracy against cost",
                       f"`{metric_col}` against forward MACs per predicted frame (log scale), one marker per trial "
                       "(hollow: stopped early, scored on fewer epochs); the step line joins the Pareto front, the "
                       f"trials no other trial beats on both: {len(front)} of {len(rows)}, cheapest first below.",
                       table=front_table(rows, front, metric_col), image="pareto.png"))
    out.append(Section("Best score by window length",
                       f"`{metric_col}` against the window length T, one line per depth (each point the best trial "
                       "of its T and depth; hollow: stopped early).", image="mpjpe_vs_frames.png"))
    tune = base_raw.get("tune", {})
    if tune.get("search") == "optuna":
        importances, reason = param_importances(rows, metric_col, tune.get("space", {}))
        if importances:
            plot_importances(importances, out_dir / IMPORTANCES_FILE)
            out.append(Section("Parameter importances",
                               f"How much of the variation of `{metric_col}` across the {len(scored)} scored trials "
                               "each searched parameter explains (Optuna's fANOVA on a study rebuilt from the trials; "
                               "sums to 1).",
                               table=(["parameter", "importance"], [[k, f"{v:.3f}"] for k, v in importances.items()]),
                               image=IMPORTANCES_FILE))
        else:
            out.append(Section("Parameter importances", f"Not computed: {reason}"))
    return out


def render_markdown(title: str, intro: str, parts: Sequence[Section]) -> str:
    lines = [f"# {title}", "", intro]
    for s in parts:
        lines += ["", f"## {s.title}", "", s.text]
        if s.image:
            lines += ["", f"![{s.title}]({s.image})"]
        if s.table is not None:
            lines += ["", markdown_table(*s.table)]
        if s.code is not None:
            lines += ["", "```yaml", s.code.rstrip("\n"), "```"]
    return "\n".join(lines) + "\n"


def _embedded(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def render_html(title: str, intro: str, parts: Sequence[Section], out_dir: Path) -> str:
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(intro)}</p>"]
    for s in parts:
        body += [f"<h2>{html.escape(s.title)}</h2>", f"<p>{html.escape(s.text)}</p>"]
        if s.image:
            body.append(_embedded(out_dir / s.image, s.title))
        if s.table is not None:
            body.append(html_table(*s.table))
        if s.code is not None:
            body.append(f"<pre><code>{html.escape(s.code)}</code></pre>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:2px 6px;"
             "text-align:right}img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow:auto}")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{style}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


def write_report(rows: Sequence[Mapping[str, Any]], table: pd.DataFrame, base_raw: Mapping[str, Any],
                 out_dir: Path, front: Sequence[int], mean_pose: Optional[Mapping[str, Any]] = None) -> None:
    """report.md and report.html (and the images only they show) into `out_dir`, which already
    holds the trials table's files, best.yaml (when a trial scored), pareto.png and
    mpjpe_vs_frames.png. `table`: the trials table as written to trials.csv; `front`: the Pareto
    front's indices into `rows`; `mean_pose`: the trivial baseline (`sections`)."""
    title = f"Tune report: {base_raw.get('name', 'experiment')}"
    intro = protocol(base_raw, metric_column(table.columns), len(rows))
    parts = sections(rows, table, base_raw, out_dir, front, mean_pose)
    (out_dir / "report.md").write_text(render_markdown(title, intro, parts))
    (out_dir / "report.html").write_text(render_html(title, intro, parts, out_dir))
