"""Accuracy against cost: the trials of a search no other trial beats on every objective.

`pareto_front` is pure (rows of numbers in, indices out). `write_pareto` writes, beside the trials
table, `pareto.md` (the front's rows, cheapest first) and `pareto.png`: the best validation metric
(y) against forward MACs per predicted frame (x, log scale), one marker per trial (hollow for trials
the scheduler stopped early, whose score comes from fewer epochs), the front joined by a step
line, the mean pose's score dashed. A trial on the front is worth its cost: every cheaper trial is
less accurate.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence

import numpy as np

from pipelines.tune.table import cell, markdown_table, metric_unit

COST = "macs_per_frame"
FRONT_COLUMNS = ("trial", "T", "depth", COST, "params", "epochs", "status")  # the metric goes after COST


def _number(value: Any) -> float:
    """A float, NaN for missing (None, NaN, or absent)."""
    return math.nan if value is None else float(value)


def pareto_front(rows: Sequence[Mapping[str, Any]], objectives: Mapping[str, Literal["min", "max"]]) -> list[int]:
    """Indices (ascending) of the rows that no other row dominates on `objectives` (column ->
    "min" or "max"). Row a dominates row b when a is at least as good on every objective and
    strictly better on one; so equal rows never dominate each other (duplicates on the front are
    all kept, duplicates of a dominated row all dropped). Rows missing an objective, or with a
    NaN or infinite value, are on no front."""
    if not objectives:
        raise ValueError("pareto_front: no objectives")
    bad = {k: m for k, m in objectives.items() if m not in ("min", "max")}
    if bad:
        raise ValueError(f"pareto_front: objectives must be 'min' or 'max', got {bad}")
    keys = list(objectives)
    values = np.array([[_number(row.get(k)) for k in keys] for row in rows], dtype=float).reshape(len(rows), len(keys))
    signs = np.array([1.0 if objectives[k] == "min" else -1.0 for k in keys])
    candidates = np.flatnonzero(np.isfinite(values).all(axis=1))
    v = values[candidates] * signs  # lower is better on every column now
    no_worse = (v[:, None, :] <= v[None, :, :]).all(axis=2)  # [a, b]: a is nowhere worse than b
    better = (v[:, None, :] < v[None, :, :]).any(axis=2)  # [a, b]: a is better than b somewhere
    dominated = (no_worse & better).any(axis=0)
    return candidates[~dominated].tolist()


def trial_label(row: Mapping[str, Any]) -> str:
    """A trial's short name in plots: "T=27 d=2" (depth left out when the model has none)."""
    depth = row.get("depth")
    has_depth = depth is not None and not (isinstance(depth, float) and math.isnan(depth))
    return f"T={int(row['T'])}" + (f" d={int(depth)}" if has_depth else "")


def front_table(rows: Sequence[Mapping[str, Any]], front: Sequence[int], metric_col: str) -> tuple[list[str], list[list[str]]]:
    """(header, cells) of the front's rows, cheapest first."""
    header = [*FRONT_COLUMNS[:4], metric_col, *FRONT_COLUMNS[4:]]
    ordered = sorted(front, key=lambda i: _number(rows[i].get(COST)))
    return header, [[cell(c, rows[i].get(c)) for c in header] for i in ordered]


def plot_pareto(rows: Sequence[Mapping[str, Any]], front: Sequence[int], metric_col: str, path: Path,
                mean_pose: Optional[float] = None) -> None:
    """pareto.png (see the module doc); the mean pose's score dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipelines.viz.plots import draw_mean_pose

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    shown = [i for i, r in enumerate(rows) if math.isfinite(_number(r.get(metric_col))) and math.isfinite(_number(r.get(COST)))]
    for i in shown:
        x, y = _number(rows[i][COST]), _number(rows[i][metric_col])
        done = rows[i].get("status") == "DONE"
        ax.scatter([x], [y], color="C0" if done else "white", edgecolors="C0", zorder=3)
        ax.annotate(trial_label(rows[i]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if front:
        ordered = sorted(front, key=lambda i: _number(rows[i][COST]))
        ax.step([_number(rows[i][COST]) for i in ordered], [_number(rows[i][metric_col]) for i in ordered],
                where="post", color="C1", label="Pareto front", zorder=2)
        ax.set_xscale("log")
        ax.margins(x=0.1)  # room for the labels of the cheapest and dearest trials
    else:
        ax.text(0.5, 0.5, f"no trial reported both {metric_col} and {COST}", transform=ax.transAxes, ha="center")
    draw_mean_pose(ax, mean_pose)
    if front or mean_pose is not None:
        ax.legend()
    ax.set_xlabel("forward MACs per predicted frame")
    ax.set_ylabel(f"{metric_col.replace('_', ' ')} ({metric_unit(metric_col)})")
    ax.set_title("Accuracy against cost (hollow: stopped early)", fontsize=10)
    ax.grid(True, alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_pareto(rows: Sequence[Mapping[str, Any]], metric_col: str, out_dir: Path,
                 mean_pose: Optional[float] = None) -> list[int]:
    """pareto.md and pareto.png in `out_dir` for the objectives (`metric_col` min, MACs per frame
    min), the mean pose's score (when given) dashed; returns the front's indices into `rows`."""
    front = pareto_front(rows, {metric_col: "min", COST: "min"})
    (out_dir / "pareto.md").write_text(markdown_table(*front_table(rows, front, metric_col)) + "\n")
    plot_pareto(rows, front, metric_col, out_dir / "pareto.png", mean_pose)
    return front
