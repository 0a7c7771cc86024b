"""Parity with the official MixSTE (`MixSTE2`) and PoseFormer (`PoseTransformer`) implementations.

Fixtures in ../shared/reference/parity (`parity_dir`): `<name>.ckpt.bin` is a small model in the
authors' checkpoint format with random weights, `<name>.io.npz` holds its constructor arguments
(`config`), an input and the official code's eval-mode output; `<name>.keys.json` is the full-size
model's official state-dict layout and parameter count.
"""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from models.checkpoint import load_model
from models.convert import (
    config_from_official,
    convert_state_dict,
    infer_config,
    load_official,
    load_official_file,
    official_state_dict,
    to_raylift_key,
)
from models.registry import build_model, count_parameters
from pipelines.cli import main

NAMES = ["mixste", "poseformer"]


def fixture_io(parity_dir, name):
    with np.load(parity_dir / f"{name}.io.npz", allow_pickle=False) as z:
        return json.loads(str(z["config"])), z["input"], z["output"]


@pytest.mark.parametrize("name", NAMES)
def test_official_outputs_reproduced(parity_dir, name):
    kwargs, x, expected = fixture_io(parity_dir, name)
    cfg, frames, joints = config_from_official(name, kwargs)
    model = build_model(cfg, frames=frames, joints=joints).eval()
    path = parity_dir / f"{name}.ckpt.bin"
    state = official_state_dict(load_official_file(path), str(path))
    model.load_state_dict(convert_state_dict(name, state, model, str(path)), strict=True)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
    assert y.shape == expected.shape
    assert np.abs(y - expected).max() < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_config_inferred_from_checkpoint_matches_fixture(parity_dir, name):
    kwargs, x, expected = fixture_io(parity_dir, name)
    model, info = load_official(name, parity_dir / f"{name}.ckpt.bin", heads=kwargs["num_heads"])
    declared, frames, joints = config_from_official(name, kwargs)
    assert (info["frames"], info["joints"]) == (frames, joints)
    for key in ("depth", "heads", "mlp_ratio", "qkv_bias"):
        assert getattr(info["config"], key) == getattr(declared, key)
    with torch.no_grad():
        assert np.abs(model(torch.from_numpy(x)).numpy() - expected).max() < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_full_size_key_layout_converts(parity_dir, name):
    layout = json.loads((parity_dir / f"{name}.keys.json").read_text())
    shapes = {re.sub(r"^module\.", "", k): tuple(v) for k, v in layout["state_dict"].items()}
    cfg, frames, joints = config_from_official(name, layout["config"])
    assert infer_config(name, shapes, "keys.json")[1:] == (frames, joints)
    with torch.device("meta"):
        model = build_model(cfg, frames=frames, joints=joints)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mapped = {to_raylift_key(name, k): s for k, s in shapes.items()}
    assert None not in mapped, "official keys without a raylift counterpart"
    assert sorted(set(own) - set(mapped)) == [] and sorted(set(mapped) - set(own)) == []
    assert mapped == own
    assert count_parameters(model) == layout["params"] == sum(math.prod(s) for s in shapes.values())
    # The conversion path itself accepts the layout (tensors of the listed shapes, on meta).
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    assert set(convert_state_dict(name, state, model, "keys.json")) == set(own)


@pytest.mark.parametrize("name", NAMES)
def test_import_cli_end_to_end(parity_dir, tmp_path, name):
    kwargs, x, expected = fixture_io(parity_dir, name)
    out = tmp_path / "imported"
    rc = main(["models", "import", "--from", name, str(parity_dir / f"{name}.ckpt.bin"), "--out", str(out),
               "--frames", str(kwargs["num_frame"])])
    assert rc == 0
    model, meta = load_model(out, expect_model=name, expect_frames=kwargs["num_frame"])
    assert meta["layout"] == "h36m" and isinstance(meta["epoch"], int)
    with torch.no_grad():
        assert np.abs(model(torch.from_numpy(x)).numpy() - expected).max() < 1e-5


def test_import_cli_refuses_wrong_frames(parity_dir, tmp_path, capsys):
    out = tmp_path / "imported"
    rc = main(["models", "import", "--from", "mixste", str(parity_dir / "mixste.ckpt.bin"), "--out", str(out),
               "--frames", "243"])
    assert rc == 2 and not out.exists()
    assert "expected T=243" in capsys.readouterr().err


def test_summary_cli_mixste_243(capsys):
    assert main(["models", "summary", "--model", "mixste", "--frames", "243"]) == 0
    text = capsys.readouterr().out
    assert "parameters       33,783,811" in text
    # Independent count of the multiply-accumulates one frame costs (T=243, J=17, C=512, 8+8 blocks):
    # per token and block 8C^2 (qkv 3C^2, proj C^2, MLP 4C^2), attention 2·J·C per spatial token
    # and 2·T·C per temporal token, joint embedding 2C, head 3C.
    t, j, c, depth = 243, 17, 512, 8
    macs = j * (2 * c + 3 * c) + 2 * depth * j * 8 * c * c + depth * (2 * j * j * c + 2 * j * t * c)
    assert f"MACs  per frame  {macs / 1e6:,.2f} M" in text
    assert f"FLOPs per frame  {2 * macs / 1e6:,.2f} M" in text


def test_summary_json_for_poseformer(capsys):
    assert main(["models", "summary", "--model", "poseformer", "--frames", "81", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["parameters"] == 9_602_885 and s["frames_predicted"] == 1
    assert s["flops_total"] == 2 * s["macs_total"] and s["flops_per_frame"] == s["flops_total"]
    assert s["flops_by_op"]["bmm"] > 0  # attention matmuls are counted


def test_summary_overrides_and_errors(capsys):
    assert main(["models", "summary", "--model", "mixste", "--frames", "27", "--joints", "16",
                 "--set", "model.dim=64", "--set", "model.depth=2", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["config"]["dim"] == 64 and s["joints"] == 16
    assert s["parameters"] == count_parameters(
        build_model(config_from_official("mixste", {"num_frame": 27, "num_joints": 16, "embed_dim_ratio": 64,
                                                    "depth": 2})[0], frames=27, joints=16))
    assert main(["models", "summary", "--model", "mixste", "--frames", "27", "--set", "model.dim=30"]) == 2
    assert main(["models", "summary", "--model", "mixste", "--frames", "27", "--set", "train.lr=1"]) == 2
    assert "model.*" in capsys.readouterr().err
