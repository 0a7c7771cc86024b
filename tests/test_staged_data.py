"""Issue 23 defect 1: data staged once from the user's machine, used on a cluster without sources.

`raylift preprocess` of a tune config prepares every data.* variant of its search space (here two
frame counts) into `data.root`. A machine without the source files (a cluster) then finds each
variant's dataset by its data config (`preprocessing/store/staged.py`), for train and for tune.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.config import config_from_dict
from preprocessing.config import SyntheticConfig
from preprocessing.errors import DataError
from preprocessing.keypoints.dataset import prepare_dataset
from preprocessing.sources.synthetic import ensure_synthetic

REPO = Path(__file__).resolve().parents[1]


def staged_config(tmp_path: Path) -> dict:
    """A generic (VideoPose3D-format) source copied under tmp_path/src, and a tune config that
    searches two frame counts and two depths."""
    files = ensure_synthetic(SyntheticConfig(subjects=["S1", "S9"], actions_per_subject=1, frames_per_action=60,
                                             out_dir=str(tmp_path / "synthetic")))
    src = tmp_path / "src"
    src.mkdir()
    copied = {key: str(Path(shutil.copy(getattr(files, key), src))) for key in ("data_3d", "data_2d", "cameras")}
    return {
        "name": "staged",
        "data": {"source": {"kind": "generic", **copied, "train_subjects": ["S1"], "test_subjects": ["S9"]},
                 "windows": {"mode": "seq2seq", "frames": 9}, "root": str(tmp_path / "datasets")},
        "model": {"name": "mixste", "dim": 16, "depth": 1, "heads": 2},
        "train": {"epochs": 1, "batch_size": 8, "num_workers": 1, "storage_path": str(tmp_path / "runs")},
        "tune": {"space": {"data.windows.frames": {"grid": [9, 27]}, "model.depth": {"grid": [1, 2]}},
                 "storage_path": str(tmp_path / "tune")},
    }


def test_preprocess_of_a_tune_config_stages_every_variant_and_a_machine_without_sources_finds_them(tmp_path):
    from pipelines.tune.driver import prepare_datasets
    from pipelines.tune.space import parse_space

    raw = staged_config(tmp_path)
    config = tmp_path / "tune.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "preprocess", "--config", str(config)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "data variant 1/2 of tune.space: data.windows.frames=9" in out.stdout
    assert "data variant 2/2 of tune.space: data.windows.frames=27" in out.stdout
    built = sorted(p.name for p in (tmp_path / "datasets").iterdir() if not p.name.startswith("."))
    assert len(built) == 2, built

    shutil.rmtree(tmp_path / "src")  # the cluster: no source files, only the staged windows
    messages: list[str] = []
    datasets = prepare_datasets(raw, parse_space(raw["tune"]["space"]), progress=messages.append)
    assert sorted(d.id for d in datasets.values()) == built
    assert {d.windows["frames"] for d in datasets.values()} == {9, 27}
    assert sum("source files not on this machine (data.source.data_3d=" in m for m in messages) == 2

    # A train run of the same config finds its variant; one never staged is an error naming the
    # missing file and the command that stages it.
    trained = prepare_dataset(config_from_dict(raw, ["data.windows.frames=27"]).data, progress=messages.append)
    assert trained.windows["frames"] == 27 and trained.cached
    with pytest.raises(DataError, match=r"data\.source\.data_3d=.*: not found, and .* holds no dataset built "
                                        r"from this data config; .*raylift preprocess --config"):
        prepare_dataset(config_from_dict(raw, ["data.windows.frames=81"]).data, progress=messages.append)
