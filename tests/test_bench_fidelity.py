"""`pipelines/bench/official.py` and `raylift bench fidelity`, on fake official directories made in
tmp_path (tests never fetch the authors' code)."""
from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from models.registry import parse_model_config
from pipelines.bench import fidelity, official
from pipelines.config import config_from_dict
from preprocessing.schema import ConfigError


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


# The minimal shape of the authors' MixSTE model file: it imports `local_attention` (a package the
# real file imports and never uses) and records its constructor arguments.
FAKE_MODEL = """
    import torch
    from local_attention import LocalAttention
    TAG = {tag!r}

    class MixSTE2(torch.nn.Module):
        def __init__(self, **kwargs):
            super().__init__()
            self.kwargs = kwargs
            self.head = torch.nn.Linear(2, 3)
"""


@pytest.fixture
def restore_import_state():
    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        if name == "common" or name.startswith("common.") or name == "local_attention":
            del sys.modules[name]


def test_build_official_maps_raylift_hyper_parameters(tmp_path, restore_import_state):
    _write(tmp_path / "a" / "common" / "model_cross.py", FAKE_MODEL.format(tag="a"))
    cfg = parse_model_config({"name": "mixste", "dim": 48, "depth": 3, "heads": 4, "drop_path_rate": 0.05})
    model = official.build_official(cfg, str(tmp_path / "a"), frames=27)
    assert model.kwargs == dict(num_frame=27, num_joints=17, in_chans=2, embed_dim_ratio=48, depth=3,
                                num_heads=4, mlp_ratio=2.0, qkv_bias=True, qk_scale=None, drop_rate=0.0,
                                attn_drop_rate=0.0, drop_path_rate=0.05)
    assert official.parameter_count(model) == 9
    # the stub satisfies the import but refuses to be used
    with pytest.raises(RuntimeError, match="import stub"):
        sys.modules["local_attention"].LocalAttention()


def test_a_second_official_dir_replaces_the_first_common_package(tmp_path, restore_import_state):
    for tag in ("a", "b"):
        _write(tmp_path / tag / "common" / "model_cross.py", FAKE_MODEL.format(tag=tag))
    assert sys.modules[official.official_class("mixste", str(tmp_path / "a")).__module__].TAG == "a"
    assert sys.modules[official.official_class("mixste", str(tmp_path / "b")).__module__].TAG == "b"


def test_official_class_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="model_poseformer.py not found"):
        official.official_class("poseformer", str(tmp_path))
    with pytest.raises(ConfigError, match="no official class known for model 'multiview'"):
        official.official_class("multiview", str(tmp_path))
    ff = parse_model_config({"name": "fusionformer", "L_s": 4, "L_c": 2})
    with pytest.raises(ConfigError, match="L_s == L_c"):
        official.official_kwargs(ff, 9)


def _cfg(**train) -> object:
    return config_from_dict({
        "name": "fid",
        "data": {"source": {"kind": "generic", "data_3d": "d3.npz", "data_2d": "d2.npz", "cameras": "c.json",
                            "train_subjects": ["A", "B"], "test_subjects": ["C"]},
                 "windows": {"mode": "seq2seq", "frames": 27, "flip": True}},
        "model": {"name": "mixste", "dim": 64, "depth": 4},
        "train": {"epochs": 3, "batch_size": 8, "lr": 5e-4, "lr_decay": 0.95, "optimizer": "adamw",
                  "weight_decay": 0.1, **train},
    })


def test_official_arguments_express_the_recipe():
    args = fidelity.official_arguments(_cfg(), "mixste", "ck", "k")
    flags = dict(zip(args[::2], args[1::2]))
    assert flags["-str"] == "A,B" and flags["-ste"] == "C" and flags["-f"] == "27" and flags["-s"] == "27"
    assert flags["-b"] == str(8 * 27)  # run.py steps on -b // -s windows
    assert (flags["-e"], flags["-lr"], flags["-lrd"], flags["-cs"], flags["-dep"]) == ("3", "0.0005", "0.95", "64", "4")
    assert args[-1] == "--nolog"


@pytest.mark.parametrize("train, match", [
    ({"weight_decay": 0.05}, "weight decay 0.1"),
    ({"optimizer": "adam"}, "AdamW"),
])
def test_official_arguments_refuse_what_the_script_cannot_run(train, match):
    with pytest.raises(ConfigError, match=match):
        fidelity.official_arguments(_cfg(**train), "mixste", "ck", "k")
    with pytest.raises(ConfigError, match="model.name is 'mixste'"):
        fidelity.official_arguments(_cfg(), "poseformer", "ck", "k")


LOG = """\
[1] time 0.50 lr 0.000500 3d_train 300.0 3d_eval 250.0 3d_valid 260.0 3d_val_velocity 9.0
[2] time 0.40 lr 0.000475 3d_train 200.0 3d_eval 150.0 3d_valid 160.0 3d_val_velocity 8.0
Evaluating...
----Dance----
Test time augmentation: False
Protocol #1 Error (MPJPE): 100.25 mm
Protocol #2 Error (P-MPJPE): 60.5 mm
Protocol #3 Error (N-MPJPE): 90.0 mm
----Walk----
Protocol #1 Error (MPJPE): 50.75 mm
Protocol #2 Error (P-MPJPE): 40.5 mm
Protocol #1   (MPJPE) action-wise average: 75.5 mm
"""


def test_parse_official_log_recomputes_the_action_wise_mean_unrounded():
    out = fidelity.parse_official_log(LOG)
    assert out["mpjpe"] == pytest.approx(75.5) and out["p_mpjpe"] == pytest.approx(50.5)
    assert out["epoch_minutes"] == [0.5, 0.4]
    assert set(out["actions"]) == {"Dance", "Walk"}
    with pytest.raises(ConfigError, match="no per-action"):
        fidelity.parse_official_log(LOG.split("Evaluating")[0])


def test_comparison_table_relative_to_the_authors():
    sides = [fidelity.SideResult("authors' code", 100.0, 50.0, 60.0, 3, "theirs"),
             fidelity.SideResult("raylift", 104.0, 51.0, 90.0, 3, "ours")]
    table = fidelity.comparison_table(sides)
    assert "| raylift | 104.00 | 51.00 | +4.0% | 90 | 3 | ours |" in table
    assert "| authors' code | 100.00 | 50.00 | +0.0% |" in table


# A fake authors' repository: the helpers the dataset adapter imports from `common/`, and a
# `run.py` that loads the dataset the way MixSTE's does, calls `.cuda()` unconditionally, imports
# tensorboard, and prints the final evaluation in the authors' format.
FAKE_COMMON = {
    "camera.py": """
        def normalize_screen_coordinates(X, w, h):
            return X / w * 2 - [1, h / w]
    """,
    "mocap_dataset.py": """
        class MocapDataset:
            def __init__(self, fps, skeleton):
                self._skeleton, self._fps, self._data = skeleton, fps, None
            def remove_joints(self, joints):
                self._skeleton.removed = list(joints)
            def __getitem__(self, key):
                return self._data[key]
            def subjects(self):
                return self._data.keys()
            def cameras(self):
                return self._cameras
    """,
    "h36m_dataset.py": """
        class _Skeleton:
            _parents = list(range(32))
        h36m_skeleton = _Skeleton()
        class Human36mDataset:
            def __init__(self, path):
                raise AssertionError("the fidelity adapter must replace this class")
    """,
}
FAKE_RUN = """
    import sys
    import torch
    from torch.utils.tensorboard import SummaryWriter
    from common.h36m_dataset import Human36mDataset
    ds = Human36mDataset('data/data_3d_h36m.npz')
    cam = ds.cameras()['S1'][0]
    w = torch.tensor([1.0, 2.0]).cuda()
    args = sys.argv[1:]
    for i, e in enumerate(range(int(args[args.index('-e') + 1]))):
        print('[%d] time 0.01 lr 0.1 3d_train 1.0' % (i + 1))
    print('----Walk----')
    print('Protocol #1 Error (MPJPE):', float(ds['S1']['Walk 1']['positions'].shape[0]) + float(w.sum()), 'mm')
    print('Protocol #2 Error (P-MPJPE):', float(cam['intrinsic'][0]), 'mm')
    print('removed', ds.skeleton.removed if hasattr(ds, 'skeleton') else ds._skeleton.removed)
    import random, numpy
    print('draws', random.random(), numpy.random.rand(), torch.rand(1).item())
"""


def _fake_official_run(tmp_path: Path):
    """The fake authors' repository under tmp_path/repo, its data files, and a config reading them."""
    repo = tmp_path / "repo"
    for name, text in FAKE_COMMON.items():
        _write(repo / "common" / name, text)
    _write(repo / "run.py", FAKE_RUN)
    np.savez(tmp_path / "d3.npz", positions_3d={"S1": {"Walk 1": np.zeros((7, 17, 3), np.float32)}})
    np.savez(tmp_path / "d2.npz", positions_2d={}, metadata={})
    intr = {"id": "0", "center": [500.0, 500.0], "focal_length": [1000.0, 1000.0], "radial_distortion": [0, 0, 0],
            "tangential_distortion": [0, 0], "res_w": 1000, "res_h": 1000, "azimuth": 70}
    (tmp_path / "c.json").write_text(json.dumps({"intrinsics": [intr], "extrinsics": {
        "S1": [{"orientation": [1, 0, 0, 0], "translation": [0, 0, 5000]}]}}))
    cfg = _cfg(epochs=2)
    src = cfg.data.source
    src.data_3d, src.data_2d, src.cameras = (str(tmp_path / n) for n in ("d3.npz", "d2.npz", "c.json"))
    return cfg


@pytest.mark.slow  # starts a Python subprocess that imports torch
def test_run_official_runs_the_script_with_the_adapter(tmp_path, monkeypatch):
    cfg = _fake_official_run(tmp_path)
    # A relative --official-dir (as users type it): the script runs in its own work directory.
    monkeypatch.chdir(tmp_path)
    result = fidelity.run_official(cfg, "mixste", "repo", "out", 3, progress=lambda s: None)
    # 7 frames + the .cuda()'d weights (3); focal length normalised as VideoPose3D does: 1000/1000*2
    assert (result.mpjpe, result.p_mpjpe, result.epochs) == (10.0, 2.0, 2)
    log = (tmp_path / "out" / "official.log").read_text()
    assert "removed [4, 5, 9, 10, 11, 16, 20, 21, 22, 23, 24, 28, 29, 30, 31]" in log
    # The script seeds nothing: the shim seeds Python's, NumPy's and torch's generators per run.
    draws = {seed: [] for seed in (3, 4)}
    for seed, out in ((3, "again"), (4, "other")):
        fidelity.run_official(cfg, "mixste", "repo", out, seed, progress=lambda s: None)
        draws[seed] = [line for line in (tmp_path / out / "official.log").read_text().splitlines()
                       if line.startswith("draws")]
    first = [line for line in log.splitlines() if line.startswith("draws")]
    assert first and draws[3] == first and draws[4] != first


@pytest.mark.slow  # starts a Python subprocess
def test_run_official_reports_a_failing_script(tmp_path):
    repo = tmp_path / "repo"
    for name, text in FAKE_COMMON.items():
        _write(repo / "common" / name, text)
    _write(repo / "run.py", "raise SystemExit('boom: bad flag')\n")
    (tmp_path / "c.json").write_text(json.dumps({"intrinsics": [], "extrinsics": {}}))
    cfg = _cfg()
    cfg.data.source.cameras = str(tmp_path / "c.json")
    with pytest.raises(ConfigError, match="exited with status 1(.|\n)*boom: bad flag"):
        fidelity.run_official(cfg, "mixste", str(repo), str(tmp_path / "out"), 0, progress=lambda s: None)
    with pytest.raises(ConfigError, match="run_poseformer.py not found"):
        fidelity.run_official(SimpleNamespace(), "poseformer", str(repo), str(tmp_path / "out"), 0)


def _record(seed: int, authors: float, ours: float, recipe: str = "r") -> dict:
    side = lambda name, mpjpe: {"name": name, "mpjpe": mpjpe, "p_mpjpe": mpjpe / 2, "wall_s": 10.0 * seed + 5,
                                "epochs": 3, "protocol": f"{name} protocol"}
    return {"seed": seed, "recipe": recipe, "sides": [side("authors' code", authors), side("raylift", ours)],
            "commit": f"c{seed}", "finished": "2026-12-06 20:00 UTC", "machine": "2 CPU cores"}


def test_receipt_gathers_the_recipe_s_seeds_with_mean_and_sample_spread(tmp_path):
    out = tmp_path / "out"
    for seed, authors, ours, recipe in ((0, 100.0, 90.0, "r"), (1, 110.0, 99.0, "r"), (2, 1.0, 1.0, "edited")):
        (out / f"seed{seed}").mkdir(parents=True)
        (out / f"seed{seed}" / "fidelity.json").write_text(json.dumps(_record(seed, authors, ours, recipe)))
    (out / "raylift").mkdir()  # other folders under --out are not seeds
    records = fidelity.seed_records(str(out), "r")
    assert [r["seed"] for r in records] == [0, 1]  # the edited recipe's run is left out
    text = fidelity.receipt_markdown("configs/x.yaml", records)
    # authors 100, 110: mean 105, sample sd 7.07; raylift 90, 99: mean 94.5, sd 6.36; -10% both seeds
    assert "| mean ± sd (n=2) | 105.00 ± 7.07 / 52.50 ± 3.54 | 94.50 ± 6.36 / 47.25 ± 3.18 |" in text
    assert "| 1 | 110.00 / 55.00 | 99.00 / 49.50 | 15 | 15 |" in text
    assert "MPJPE: -10.00 ± 0.00 %" in text and "(per seed: -10.0%, -10.0%)" in text
    assert "- seed 1: commit c1," in text and "- raylift: raylift protocol" in text
    records[1]["sides"][1]["protocol"] = "raylift protocol, seed 1"
    text = fidelity.receipt_markdown("configs/x.yaml", records)
    assert "- raylift, seed 0: raylift protocol\n- raylift, seed 1: raylift protocol, seed 1" in text
    one = fidelity.receipt_markdown("configs/x.yaml", records[:1])
    assert "100.00 (one seed)" in one
    with pytest.raises(ConfigError, match="no seed has finished"):
        fidelity.receipt_markdown("configs/x.yaml", [])


@pytest.mark.slow  # starts the fake script's subprocess twice
def test_bench_fidelity_runs_each_seed_and_writes_the_receipt(tmp_path, monkeypatch):
    import yaml

    from pipelines.cli import main

    cfg = _fake_official_run(tmp_path)
    (tmp_path / "fid.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "fidelity", "--official-dir", "repo", "--model", "mixste", "--config", "fid.yaml",
                 "--skip-raylift", "--out", "out", "--seeds", "0", "1", "--receipt", "fid.receipt.md"]) == 0
    assert sorted(p.name for p in (tmp_path / "out" / "fid").iterdir()) == ["seed0", "seed1"]
    receipt = (tmp_path / "fid.receipt.md").read_text()
    # the fake script's MPJPE is 10 and its P-MPJPE 2 on every seed: a spread of exactly 0
    assert "| mean ± sd (n=2) | 10.00 ± 0.00 / 2.00 ± 0.00 |" in receipt
    assert "# Reproduction receipt: `fid.yaml`" in receipt and "- seed 1: commit " in receipt
    # --seeds with no seed rewrites the receipt from the runs already there
    (tmp_path / "fid.receipt.md").unlink()
    assert main(["bench", "fidelity", "--official-dir", "repo", "--model", "mixste", "--config", "fid.yaml",
                 "--out", "out", "--seeds", "--receipt", "fid.receipt.md"]) == 0
    assert (tmp_path / "fid.receipt.md").read_text() == receipt
