"""Parity with the authors' CrossFormer (`common/model_crossformer.py`, class `PoseTransformer`).

Fixtures in ../shared/reference/parity (`parity_dir`, skipped when absent): `crossformer.ckpt.bin`
(small model, random weights, the authors' checkpoint layout with a pickled `RandomState`),
`crossformer.io.npz` (input, eval-mode output, flip-averaged output, the input after the
official forward zeroed frames 10-15 in place) and `crossformer.keys.json` (the paper-size layout).
The variant checks (T, no input mutation, any-T paper variant) need no fixture.
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
    key_group,
    load_official_file,
    official_state_dict,
    to_raylift_key,
    unused_official_keys,
)
from models.crossformer import CrossFormer, CrossFormerConfig
from models.registry import build_model, count_parameters
from pipelines.cli import main
from preprocessing.schema import ConfigError

LEFT, RIGHT = [4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]  # the fixture README's flip (evaluate())
OFFICIAL_PARAMS = 14_624_501  # paper size, used tensors only (the released state dict: 14,790,259)


def fixture(parity_dir):
    with np.load(parity_dir / "crossformer.io.npz", allow_pickle=False) as z:
        return json.loads(str(z["config"])), {k: z[k] for k in z.files if k not in ("config", "source")}


def official_model(parity_dir):
    kwargs, io = fixture(parity_dir)
    cfg, frames, joints = config_from_official("crossformer", kwargs)
    model = build_model(cfg, frames=frames, joints=joints).eval()
    path = parity_dir / "crossformer.ckpt.bin"
    state = official_state_dict(load_official_file(path), str(path))
    model.load_state_dict(convert_state_dict("crossformer", state, model, str(path)), strict=True)
    return model, io


def test_official_output_reproduced_without_mutating_the_input(parity_dir):
    model, io = official_model(parity_dir)
    x = torch.from_numpy(io["input"])
    before = x.clone()
    with torch.no_grad():
        y = model(x).numpy()
    assert y.shape == io["output"].shape == (2, 1, 17, 3)
    assert np.abs(y - io["output"]).max() < 1e-5
    assert torch.equal(x, before), "the official variant must not zero the caller's frames in place"
    # The released forward did zero frames 10-15 of its input; the output ignores them.
    assert (io["input_after_forward"][:, 10:16] == 0).all() and not (io["input"][:, 10:16] == 0).all()
    x[:, 12] += 1.0
    with torch.no_grad():
        assert torch.equal(model(x), torch.from_numpy(y))


def test_official_flip_average_reproduced(parity_dir):
    model, io = official_model(parity_dir)
    if "output_flip_avg" not in io:
        pytest.skip("fixture has no output_flip_avg")
    with torch.no_grad():
        y = model(torch.from_numpy(io["input"]))
        yf = model(torch.from_numpy(io["input_flip"]))
    yf[..., 0] *= -1
    yf[:, :, LEFT + RIGHT] = yf[:, :, RIGHT + LEFT]
    assert np.abs(((y + yf) / 2).numpy() - io["output_flip_avg"]).max() < 1e-5


def test_full_size_key_layout_converts(parity_dir):
    layout = json.loads((parity_dir / "crossformer.keys.json").read_text())
    shapes = {re.sub(r"^module\.", "", k): tuple(v) for k, v in layout["state_dict"].items()}
    cfg, frames, joints = config_from_official("crossformer", layout["config"])
    assert infer_config("crossformer", shapes, "keys.json")[1:] == (frames, joints) == (81, 17)
    model = build_model(cfg, frames=frames, joints=joints)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    dropped = unused_official_keys("crossformer", shapes)
    used = {k: s for k, s in shapes.items() if k not in dropped}
    mapped = {to_raylift_key("crossformer", k): s for k, s in used.items()}
    assert None not in mapped and mapped == own
    # Every dropped tensor is one the README lists as unused; `bn` buffers are not parameters.
    assert {key_group(k) for k in dropped} >= {"Temporal_pos_embed", "blocks1.N.gamma4", "Spatial_blocks.N.local_mp.bn.*"}
    unused_params = sum(math.prod(s) for k, s in shapes.items() if k in dropped and "running_" not in k
                        and "num_batches" not in k)
    assert count_parameters(model) == OFFICIAL_PARAMS == layout["params"] - unused_params
    zeros = {k: torch.zeros(s) for k, s in shapes.items()}
    assert set(convert_state_dict("crossformer", zeros, model, "keys.json")) == set(own)


def test_import_cli_reports_dropped_keys(parity_dir, tmp_path, capsys):
    _, io = fixture(parity_dir)
    out = tmp_path / "imported"
    assert main(["models", "import", "--from", "crossformer", str(parity_dir / "crossformer.ckpt.bin"),
                 "--out", str(out), "--frames", "81"]) == 0
    printed = capsys.readouterr().out
    assert "never uses" in printed and "blocks1.N.gamma4" in printed and "Spatial_blocks.N.local_mp.bn.*" in printed
    model, meta = load_model(out, expect_model="crossformer", expect_frames=81)
    assert meta["model"]["variant"] == "official" and meta["imported_from"]["dropped_unused"]
    with torch.no_grad():
        assert np.abs(model(torch.from_numpy(io["input"])).numpy() - io["output"]).max() < 1e-5


# ---------------------------------------------------------------------------- variants (no fixture)

TINY = dict(spatial_dim=8, depth=1, heads=2)


@pytest.mark.parametrize("frames", [9, 27, 243])
def test_official_variant_refuses_other_window_lengths(frames):
    with pytest.raises(ConfigError, match="T=81 frames only"):
        CrossFormer(CrossFormerConfig(**TINY), frames, 17)


@pytest.mark.parametrize("frames", [1, 9, 27])
def test_paper_variant_runs_at_any_window_length(frames):
    model = CrossFormer(CrossFormerConfig(**TINY, variant="paper"), frames, 17).eval()
    x = torch.randn(2, frames, 17, 2)
    before = x.clone()
    with torch.no_grad():
        assert model(x).shape == (2, 1, 17, 3)
    assert torch.equal(x, before)


def test_variant_defaults_and_official_structure():
    official, paper = CrossFormerConfig().resolved(), CrossFormerConfig(variant="paper").resolved()
    assert (official.mlp_ratio, official.qkv_bias, paper.mlp_ratio, paper.qkv_bias) == (4.0, False, 2.0, True)
    model = CrossFormer(CrossFormerConfig(**TINY), 81, 17)
    blk = model.spatial_blocks[0]
    assert blk.norm1.eps == 1e-5 and blk.gamma1 is not None and blk.attn.qkv.bias is None
    assert blk.between.conv1.groups == 1 and model.temporal_pos.shape == (1, 8 * 17)
    x = torch.randn(2, 81, 17, 2)
    model.eval()
    y = model(x)
    x[:, 10:16] = torch.randn(2, 6, 17, 2)  # the released code ignores frames 10-15
    assert torch.equal(model(x), y)
