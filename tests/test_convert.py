"""Official-checkpoint import without the shared fixtures: files written here in the official
layout (DataParallel `module.` keys, NumPy random_state), key mapping, safe loading."""
from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import CheckpointError, load_model
from models.convert import (
    OFFICIAL_CHECKPOINTS,
    convert_state_dict,
    import_official,
    infer_config,
    load_official,
    load_official_file,
    to_official_key,
    to_raylift_key,
)
from models.registry import build_model, parse_model_config
from pipelines.cli import main

SMALL = {
    "mixste": {"name": "mixste", "dim": 16, "depth": 3, "heads": 2, "mlp_ratio": 4.0},
    "poseformer": {"name": "poseformer", "spatial_dim": 8, "depth": 2, "heads": 2},
    "crossformer": {"name": "crossformer", "spatial_dim": 8, "depth": 1, "heads": 2},
    "fusionformer": {"name": "fusionformer", "dim": 8, "L_s": 1, "L_c": 1, "heads": 2, "refine_hidden": 4},
}
FRAMES = {"crossformer": 81}  # its official variant runs at T=81 only
# Files written in the `model_pos` layout here; CrossFormer's and Fusionformer's own formats are
# checked against the authors' fixtures (tests/test_parity_crossformer.py, test_parity_fusionformer.py).
VIDEOPOSE_LAYOUT = ["mixste", "poseformer"]


def official_file(path: Path, name: str, frames: int = 9, joints: int = 17, drop: str | None = None,
                  extra: str | None = None) -> torch.nn.Module:
    """Write `path` the way the authors' training scripts do; returns the model whose weights it holds."""
    torch.manual_seed(1)
    model = build_model(parse_model_config(SMALL[name]), frames=frames, joints=joints)
    for p in model.parameters():  # non-trivial values everywhere (positions start at zero)
        p.data.normal_(0, 0.1)
    state = {"module." + to_official_key(name, k): v.clone() for k, v in model.state_dict().items()}
    if drop:
        del state["module." + drop]
    if extra:
        state["module." + extra] = torch.zeros(3)
    torch.save({"epoch": 42, "lr": 1e-4, "optimizer": {"state": {}, "param_groups": []},
                "random_state": np.random.RandomState(0).get_state(), "model_pos": state}, path)
    return model.eval()


class _Payload:
    """Unpickling this would call open(marker, 'w'): creating the file proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


@pytest.mark.parametrize("name", list(OFFICIAL_CHECKPOINTS))
def test_key_mapping_round_trips(name):
    model = build_model(parse_model_config(SMALL[name]), frames=FRAMES.get(name, 9), joints=17)
    for key in model.state_dict():
        official = to_official_key(name, key)
        assert official is not None and official != key
        assert to_raylift_key(name, official) == key
    assert to_raylift_key(name, "no_such_module.weight") is None


@pytest.mark.parametrize("name", VIDEOPOSE_LAYOUT)
def test_official_file_loads_and_reproduces(tmp_path, name):
    reference = official_file(tmp_path / "ckpt.bin", name, frames=9, joints=16)
    model, info = load_official(name, tmp_path / "ckpt.bin", heads=2)
    leaked = [g for g in torch.serialization.get_safe_globals()
              if (g[0] if isinstance(g, tuple) else g).__module__.startswith("numpy")]
    assert leaked == []  # the NumPy globals are admitted only during the load
    assert (info["frames"], info["joints"], info["epoch"], info["lr"]) == (9, 16, 42, 1e-4)
    for key, value in SMALL[name].items():
        assert getattr(info["config"], key) == value
    x = torch.randn(2, 9, 16, 2)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_infer_config_from_shapes_only():
    shapes = {
        "Spatial_pos_embed": (1, 17, 64), "Temporal_pos_embed": (1, 27, 64),
        "STEblocks.0.mlp.fc1.weight": (128, 64), "STEblocks.0.attn.qkv.bias": (192,),
        "STEblocks.1.norm1.weight": (64,), "STEblocks.2.norm1.weight": (64,),
    }
    cfg, frames, joints = infer_config("mixste", shapes, "shapes")
    assert (cfg.dim, cfg.depth, cfg.mlp_ratio, cfg.qkv_bias, cfg.heads, frames, joints) == (64, 3, 2.0, True, 8, 27, 17)


@pytest.mark.parametrize("drop,extra,listed", [
    ("TTEblocks.1.mlp.fc2.bias", None, "missing keys: TTEblocks.1.mlp.fc2.bias"),
    (None, "Temporal_extra.weight", "unexpected keys: Temporal_extra.weight"),
])
def test_key_mismatch_lists_keys(tmp_path, drop, extra, listed):
    official_file(tmp_path / "ckpt.bin", "mixste", drop=drop, extra=extra)
    with pytest.raises(CheckpointError, match=listed.replace(".", r"\.")):
        load_official("mixste", tmp_path / "ckpt.bin")


def test_convert_state_dict_reports_both_sides():
    model = build_model(parse_model_config(SMALL["poseformer"]), frames=9, joints=17)
    state = {to_official_key("poseformer", k): v for k, v in model.state_dict().items()}
    state["blocks.7.norm1.weight"] = state.pop("blocks.1.norm1.weight")
    with pytest.raises(CheckpointError) as err:
        convert_state_dict("poseformer", state, model, "file.bin")
    assert "missing keys: blocks.1.norm1.weight" in str(err.value)
    assert "unexpected keys: blocks.7.norm1.weight" in str(err.value)
    assert "file.bin" in str(err.value)


def test_wrong_format_and_frames_are_refused(tmp_path):
    official_file(tmp_path / "ckpt.bin", "mixste", frames=9)
    with pytest.raises(CheckpointError, match="not a poseformer checkpoint"):
        load_official("poseformer", tmp_path / "ckpt.bin")
    with pytest.raises(CheckpointError, match="T=9 frames.*expected T=27"):
        load_official("mixste", tmp_path / "ckpt.bin", frames=27)
    torch.save({"weights": {}}, tmp_path / "other.bin")
    with pytest.raises(CheckpointError, match="no 'model_pos'"):
        load_official("mixste", tmp_path / "other.bin")
    (tmp_path / "truncated.bin").write_bytes((tmp_path / "ckpt.bin").read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated.bin"):
        load_official_file(tmp_path / "truncated.bin")
    with pytest.raises(CheckpointError, match="file missing"):
        load_official_file(tmp_path / "absent.bin")


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.bin"
    official_file(evil, "mixste")
    payload = torch.load(evil, weights_only=False)  # our own file: trusted
    payload["random_state"] = _Payload(marker)
    torch.save(payload, evil)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="evil.bin: holds code-bearing pickles"):
        load_official_file(evil)
    assert not marker.exists(), "unpickling ran the payload"
    out = tmp_path / "imported"
    assert main(["models", "import", "--from", "mixste", str(evil), "--out", str(out)]) == 2
    assert not marker.exists() and not out.exists()
    torch.load(evil, weights_only=False)  # the payload is live: an unrestricted load runs it
    assert marker.exists()


def test_import_cli_writes_a_raylift_checkpoint(tmp_path, capsys):
    reference = official_file(tmp_path / "ckpt.bin", "poseformer", frames=9)
    out = tmp_path / "ckpt"
    rc = main(["models", "import", "--from", "poseformer", str(tmp_path / "ckpt.bin"), "--out", str(out),
               "--frames", "9", "--heads", "2"])
    assert rc == 0 and "epoch 42" in capsys.readouterr().out
    model, meta = load_model(out, expect_model="poseformer", expect_frames=9)
    assert (meta["layout"], meta["epoch"], meta["joints"]) == ("h36m", 42, 17)
    x = torch.randn(3, 9, 17, 2)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "ckpt.bin"]  # no staging left behind


def test_import_direct_api_matches_cli_meta(tmp_path):
    official_file(tmp_path / "ckpt.bin", "mixste", frames=9)
    out = import_official("mixste", tmp_path / "ckpt.bin", tmp_path / "out", heads=2)
    _, meta = load_model(out, expect_model="mixste")
    assert meta["model"]["dim"] == 16 and meta["model"]["depth"] == 3 and meta["frames"] == 9
