"""Accuracy against cost and the tune report, without Ray: the Pareto front against hand-made
points, the trials table's cost columns from hand-made Tune results, and the files
`write_results` writes (report.md, self-contained report.html, pareto.*, Optuna importances)."""
from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from models.cost import macs_per_frame
from models.registry import build_model
from pipelines.config import config_from_dict
from pipelines.tune.driver import collect_rows, write_results
from pipelines.tune.importance import param_importances
from pipelines.tune.pareto import pareto_front

REPO = Path(__file__).resolve().parents[1]
M = "best_val_mpjpe"


def _points(*pairs) -> list[dict]:
    return [{M: y, "macs_per_frame": x} for x, y in pairs]


# ----------------------------------------------------------------------------- the front


def test_front_of_hand_made_points():
    # (MACs, MPJPE): 0, 2, 4 trade off; 1 is beaten by 0 on both; 3 by 2 on MPJPE at equal MACs;
    # 5 costs as much as 4 for a worse error.
    rows = _points((1e6, 60.0), (2e6, 70.0), (3e6, 50.0), (3e6, 55.0), (9e6, 40.0), (9e6, 45.0))
    assert pareto_front(rows, {M: "min", "macs_per_frame": "min"}) == [0, 2, 4]


def test_duplicates_share_their_fate():
    rows = _points((1e6, 60.0), (2e6, 70.0), (2e6, 70.0), (1e6, 60.0), (3e6, 50.0))
    # A dominated point and its duplicate both leave; equal points on the front both stay.
    assert pareto_front(rows, {M: "min", "macs_per_frame": "min"}) == [0, 3, 4]


def test_single_point_missing_values_and_no_rows():
    assert pareto_front(_points((5e6, 80.0)), {M: "min", "macs_per_frame": "min"}) == [0]
    rows = _points((1e6, None), (2e6, math.nan), (3e6, 50.0), (4e6, 40.0)) + [{M: 10.0}]
    # Unscored or uncosted rows are on no front and dominate nothing (row 0's 1e6 MACs would win).
    assert pareto_front(rows, {M: "min", "macs_per_frame": "min"}) == [2, 3]
    assert pareto_front([], {M: "min", "macs_per_frame": "min"}) == []


def test_max_mode_objective():
    rows = [{"acc": 0.9, "cost": 3}, {"acc": 0.8, "cost": 1}, {"acc": 0.7, "cost": 2}, {"acc": 0.95, "cost": 3}]
    assert pareto_front(rows, {"acc": "max", "cost": "min"}) == [1, 3]
    assert pareto_front(rows, {"acc": "min", "cost": "min"}) == [1, 2]  # the opposite sense, the other front
    with pytest.raises(ValueError, match="'min' or 'max'"):
        pareto_front(rows, {"acc": "maximise"})


# ----------------------------------------------------------------------------- the trials table


def _demo_raw(tmp_path: Path, **tune) -> dict:
    raw = yaml.safe_load((REPO / "configs" / "tune_demo.yaml").read_text())
    raw["data"]["root"] = str(tmp_path / "datasets")
    raw["tune"].update(tune)
    return raw


def _result(df: pd.DataFrame, overrides: dict, name: str = "trial_0001") -> SimpleNamespace:
    return SimpleNamespace(config={"overrides": overrides}, metrics_dataframe=df, error=None, path=f"/x/{name}")


def test_trials_table_carries_cost_speed_memory_and_the_curve(tmp_path):
    raw = _demo_raw(tmp_path)  # train.epochs 3
    df = pd.DataFrame({"epoch": [1, 2, 2, 3], "val_mpjpe": [300.0, 260.0, 250.0, 200.0],
                       "macs_per_frame": [5e5] * 4, "train_frames_per_s": [100.0, 200.0, 300.0, 400.0],
                       "peak_memory_mb": [700.0, 900.0, 800.0, 850.0], "time_total_s": [1.0, 2.0, 3.0, 4.0]})
    row, = collect_rows([_result(df, {"model.depth": 1})], raw, "val_mpjpe")
    assert (row["macs_per_frame"], row["train_frames_per_s"], row["peak_memory_mb"]) == (5e5, 250.0, 900.0)
    assert row["_curve"] == [(1, 300.0), (2, 250.0), (3, 200.0)]  # the redone epoch 2: its last report
    # An older trial that reported no cost: counted from its config; no speed or memory to show.
    old = df[["epoch", "val_mpjpe", "time_total_s"]]
    row, = collect_rows([_result(old, {"model.depth": 1, "data.windows.frames": 9})], raw, "val_mpjpe")
    cfg = config_from_dict({**raw, "model": {**raw["model"], "depth": 1}})
    assert row["macs_per_frame"] == macs_per_frame(build_model(cfg.model, frames=9, joints=17), 9, 17)
    assert row["train_frames_per_s"] is None and row["peak_memory_mb"] is None


# ----------------------------------------------------------------------------- the written files


def _row(trial: str, t: int, depth: int, macs: float, score, status: str = "DONE", lr: float = 2e-3) -> dict:
    curve = [] if score is None else [(e, score + 30.0 * (3 - e)) for e in range(1, 4 if status == "DONE" else 2)]
    return {"data.windows.frames": t, "model.depth": depth, "train.lr": lr, "T": t, "depth": depth, "params": 1000 * depth,
            "macs_per_frame": macs, M: score, "epochs": len(curve), "train_frames_per_s": 5000.0 / t,
            "peak_memory_mb": 600.0 + depth, "wall_s": 10.0, "status": status if score is not None else "ERROR",
            "trial": trial, "_curve": curve}


ROWS = [  # sorted by score, as collect_rows returns them
    _row("t1", 27, 2, 6.6e5, 120.0),
    _row("t2", 9, 2, 5.8e5, 130.0),
    _row("t3", 27, 1, 6.0e5, 150.0, "STOPPED"),  # dominated by t2: cheaper and better
    _row("t4", 9, 1, 3.2e5, 160.0),
    _row("t5", 9, 1, 3.2e5, None),  # errored: no score, on no front
]


def _sections(markdown: str) -> dict[str, str]:
    return dict(re.findall(r"^## (.+?)\n(.*?)(?=^## |\Z)", markdown, flags=re.S | re.M))


def test_write_results_writes_the_front_and_a_self_contained_report(tmp_path):
    with warnings.catch_warnings():
        # e.g. matplotlib's "No artists with labels" for legend labels starting with "_", as
        # Tune's trial names do ("_trial_<id>_..."): every plot must be complete.
        warnings.simplefilter("error", UserWarning)
        summary = write_results([{**r, "trial": f"_trial_{r['trial']}"} for r in ROWS], _demo_raw(tmp_path),
                                tmp_path / "out")
    out = tmp_path / "out"
    for name in ("trials.csv", "pareto.md", "pareto.png", "learning_curves.png", "report.md", "report.html", "best.yaml"):
        assert (out / name).is_file(), name
    assert not (out / "importances.png").exists()  # a grid search, not Optuna
    table = pd.read_csv(out / "trials.csv")
    assert "_curve" not in table and {"macs_per_frame", "train_frames_per_s", "peak_memory_mb"} <= set(table.columns)
    assert "| 0.002 | 27 | 2 | 2000 | 0.66M | 120.00 | 3 | 185 | 602 | 10.0 | DONE | _trial_t1 |" in summary["markdown"]

    front = (out / "pareto.md").read_text()
    assert [line.split(" | ")[0] for line in front.splitlines()[2:]] == ["| _trial_t4", "| _trial_t2", "| _trial_t1"]

    report = (out / "report.md").read_text()
    parts = _sections(report)
    assert list(parts) == ["Trials", "Best configuration", "Learning curves", "Accuracy against cost",
                           "Best score by window length"]
    assert "up to 3 epoch(s)" in report and "ASHA" in report and "validation split" in report
    assert "| 0.002 | 9 | 1 | 1000 | 0.32M | 160.00 |" in parts["Trials"]
    assert "![Accuracy against cost](pareto.png)" in parts["Accuracy against cost"]
    assert "| _trial_t3 |" not in parts["Accuracy against cost"] and "3 of 5" in parts["Accuracy against cost"]
    assert "```yaml\n# Best trial" in parts["Best configuration"]
    assert "the 4 best-scored trial(s)" in parts["Learning curves"]

    page = (out / "report.html").read_text()
    images = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(images) == 3 and all(src.startswith("data:image/png;base64,iVBOR") for src in images)
    assert "<td>_trial_t4</td>" in page and "raylift train --config best.yaml" in page


def test_the_mean_pose_stands_under_every_table_and_in_every_plot(tmp_path):
    """The trivial baseline (`mean_pose_reference`) is printed under the trials table (trials.md,
    the console's markdown, the report's Trials section, the HTML) and drawn into the three plots of
    scores; a search without one (image models) shows none."""
    rows = [{**r, "trial": f"_trial_{r['trial']}"} for r in ROWS]
    reference = {"val_mpjpe": 177.33, "split": "val", "frames": 27}
    line = ("Mean pose: 177.33 mm val_mpjpe on the val split: the mean training pose predicted for every frame, "
            "scored by the trials' own validation code on the T=27 windows")
    summary = write_results(rows, _demo_raw(tmp_path), tmp_path / "with", reference)
    bare = write_results(rows, _demo_raw(tmp_path), tmp_path / "without")
    with_, without = tmp_path / "with", tmp_path / "without"
    assert summary["mean_pose"] == reference and bare["mean_pose"] is None
    assert line in summary["markdown"] and line in (with_ / "trials.md").read_text()
    assert line in _sections((with_ / "report.md").read_text())["Trials"]
    assert line.replace("'", "&#x27;") in (with_ / "report.html").read_text()
    assert "Mean pose" not in (without / "trials.md").read_text() + (without / "report.md").read_text()
    for plot in ("mpjpe_vs_frames.png", "pareto.png", "learning_curves.png"):
        assert (with_ / plot).read_bytes() != (without / plot).read_bytes(), plot
    assert pd.read_csv(with_ / "trials.csv").equals(pd.read_csv(without / "trials.csv"))  # trials only


def test_optuna_search_reports_parameter_importances(tmp_path):
    # 8 trials where the depth decides the score and the lr barely matters.
    rows = [_row(f"t{i}", 27, 1 + i % 2, 3e5 * (1 + i % 2), 200.0 - 60.0 * (i % 2) + i, lr=10 ** (-4 + i / 4))
            for i in range(8)]
    raw = _demo_raw(tmp_path, search="optuna", space={"model.depth": {"choice": [1, 2]},
                                                      "train.lr": {"loguniform": [1e-4, 1e-2]}})
    write_results(sorted(rows, key=lambda r: r[M]), raw, tmp_path / "out")
    out = tmp_path / "out"
    assert (out / "importances.png").stat().st_size > 1000
    part = _sections((out / "report.md").read_text())["Parameter importances"]
    values = dict(re.findall(r"^\| (\S+) \| ([0-9.]+) \|$", part, flags=re.M))
    assert set(values) == {"model.depth", "train.lr"}  # T did not vary: left out
    assert float(values["model.depth"]) > float(values["train.lr"])
    assert sum(map(float, values.values())) == pytest.approx(1.0, abs=2e-3)
    assert len(re.findall(r'src="data:image/png;base64,', (out / "report.html").read_text())) == 4


def test_importances_say_why_not_in_one_line(tmp_path):
    raw = _demo_raw(tmp_path, search="optuna")
    write_results([ROWS[0], ROWS[4]], raw, tmp_path / "one")
    part = _sections((tmp_path / "one" / "report.md").read_text())["Parameter importances"]
    assert part.strip() == "Not computed: 1 trial(s) with a score: importances need at least 2."
    assert not (tmp_path / "one" / "importances.png").exists()
    same = [_row("a", 9, 1, 3e5, 150.0), _row("b", 9, 1, 3e5, 140.0)]
    assert param_importances(same, M, {}) == ({}, "no searched value varied across the 2 scored trials: "
                                                   "nothing to attribute.")
