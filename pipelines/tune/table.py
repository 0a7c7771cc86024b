"""How a search's trials read in its results files: one cell formatter for the Markdown tables
(trials.md, pareto.md, report.md) and the HTML report, so every view shows the same figures.

Trials-table columns: the searched config keys ("model.depth", ...), "T", "depth", "params",
"macs_per_frame" (forward multiply-accumulates per predicted frame, models/cost.py), "best_<metric>",
"epochs", "train_frames_per_s", "peak_memory_mb", "wall_s", "status" (DONE, STOPPED early by the
scheduler, ERROR) and "trial". Keys starting with "_" are private to the writers (e.g. the
per-epoch curve) and are never shown.
"""
from __future__ import annotations

import html
import math
from typing import Any, Mapping, Sequence

import pandas as pd

from pipelines.viz.tables import render_table


def metric_unit(metric_col: str) -> str:
    """Unit of a searched metric: pixels for image models' `val_px`, else millimetres."""
    return "px" if metric_col.endswith("_px") else "mm"


def metric_column(columns: Sequence[str]) -> str:
    """The trials table's score column: the one named best_<metric>."""
    return [c for c in columns if c.startswith("best_")][0]


def public_columns(df: pd.DataFrame) -> pd.DataFrame:
    """`df` without the private ("_"-prefixed) columns."""
    return df.drop(columns=[c for c in df.columns if str(c).startswith("_")])


def cell(column: str, value: Any) -> str:
    """One value as shown in a table: empty for missing, MACs in millions, rates and MiB whole."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column == "macs_per_frame":
        return f"{float(value) / 1e6:,.2f}M"
    if column in ("train_frames_per_s", "peak_memory_mb"):
        return f"{float(value):,.0f}"
    if isinstance(value, float):
        return f"{value:.2f}" if column.startswith("best_") else f"{value:.1f}" if column == "wall_s" else f"{value:g}"
    return str(value)


def table_cells(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """(header, rows of cell strings) of `df`'s public columns."""
    shown = public_columns(df)
    cols = [str(c) for c in shown.columns]
    return cols, [[cell(c, row[c]) for c in cols] for _, row in shown.iterrows()]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return render_table(header, rows, markdown=True)


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>\n" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def mean_pose_line(mean_pose: Mapping[str, Any]) -> str:
    """The line under a trials table that gives its trivial baseline (`pipelines.tune.driver.
    mean_pose_reference`)."""
    return (f"Mean pose: {mean_pose['val_mpjpe']:.2f} mm val_mpjpe on the {mean_pose['split']} split: the mean "
            "training pose predicted for every frame, scored by the trials' own validation code on the "
            f"T={mean_pose['frames']} windows; a trial must beat it to have learned from the 2D input.")
