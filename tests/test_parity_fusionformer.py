"""Parity with the authors' Fusionformer (`common/Fusionformer.py` class `Fusionformer`,
`common/refine.py` class `refine`, the `run.py` test path with `--refine`).

Fixtures in ../shared/reference/parity (`parity_dir`, skipped when absent): the two checkpoints
(`fusionformer.ckpt.bin` transformer, `fusionformer.refine.ckpt.bin` refinement; bare DataParallel
state dicts), `fusionformer.io.npz` (inputs, every intermediate and output of the official test
path, which feeds the GROUND-TRUTH root depth to the refinement) and `fusionformer.keys.json`.
"""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from models.checkpoint import load_model
from models.convert import config_from_official, convert_state_dict, infer_config, load_official, to_raylift_key
from models.fusionformer import Fusionformer, FusionformerConfig, back_project, estimate_root_depth
from models.losses import build_loss, forward_for_loss
from models.registry import build_model, count_parameters
from pipelines.cli import main

TRANS_PARAMS, REFINE_PARAMS = 12_243_392, 11_289_906  # paper size; released trans 12,244,813 incl. unused fcn


def fixture(parity_dir):
    with np.load(parity_dir / "fusionformer.io.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def official_model(parity_dir):
    io = fixture(parity_dir)
    model, info = load_official("fusionformer", parity_dir / "fusionformer.ckpt.bin",
                                heads=json.loads(str(io["config"]))["num_heads"],
                                refine=parity_dir / "fusionformer.refine.ckpt.bin")
    return model, info, io


def unflip(y: torch.Tensor, io) -> torch.Tensor:
    left, right = [int(i) for i in io["joints_left"]], [int(i) for i in io["joints_right"]]
    y = y.clone()
    y[..., 0] *= -1
    y[:, :, left + right] = y[:, :, right + left]
    return y


def test_official_test_path_reproduced(parity_dir):
    model, info, io = official_model(parity_dir)
    assert info["dropped"] == ["fcn.N.*"]
    x = torch.from_numpy(io["input_2d_testaug"])  # (B, 2, T, J, 2): original, flipped
    cam, gt = torch.from_numpy(io["cam_intrinsic"]), torch.from_numpy(io["gt_3d_center"])
    with torch.no_grad():
        out, outf = model.forward_pose(x[:, 0]), model.forward_pose(x[:, 1])
        assert np.abs(out.numpy() - io["output"]).max() < 1e-5
        assert np.abs(outf.numpy() - io["trans_out_flip_raw"]).max() < 1e-5
        pose = (out + unflip(outf, io)) / 2
        assert np.abs(pose.numpy() - io["trans_out_testaug"]).max() < 1e-5
        root_depth = gt[:, 0, 0, 2]  # the official protocol: ground-truth root depth
        xyz = back_project(pose, x[:, 0], cam, root_depth)
        assert np.abs(xyz.numpy() - io["xyz_from_uvd"]).max() < 1e-5
        refined = model.refine(pose, x[:, 0], cam, root_depth)
        assert np.abs(refined.numpy() - io["refine_out"]).max() < 1e-5
        final = refined[:, int(io["pad"])].unsqueeze(1)
        final[:, :, 0] = 0
        assert np.abs(final.numpy() - io["final_pred_refined"]).max() < 1e-5
        # The whole model with explicit intrinsics and root depth = trans + refine (no flip).
        direct = model(x[:, 0], intrinsics=cam, root_depth=root_depth)
        torch.testing.assert_close(direct, model.refine(out, x[:, 0], cam, root_depth))


def test_plain_forward_matches_the_official_single_pass(parity_dir):
    model, _, io = official_model(parity_dir)
    with torch.no_grad():
        assert np.abs(model.forward_pose(torch.from_numpy(io["input"])).numpy() - io["output"]).max() < 1e-5


def test_full_size_key_layouts_convert(parity_dir):
    layout = json.loads((parity_dir / "fusionformer.keys.json").read_text())
    shapes = {re.sub(r"^module\.", "", k): tuple(v) for k, v in layout["state_dict"].items()}
    shapes.update({re.sub(r"^module\.", "", k): tuple(v) for k, v in layout["refine"]["state_dict"].items()})
    cfg, frames, joints = config_from_official("fusionformer", layout["config"])
    inferred, t, j = infer_config("fusionformer", shapes, "keys.json")
    assert (t, j) == (frames, joints) == (9, 17) and (inferred.L_s, inferred.L_c, inferred.refine_hidden) == (4, 4, 1024)
    model = build_model(cfg, frames=frames, joints=joints)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    used = {k: s for k, s in shapes.items() if not k.startswith("fcn.")}
    mapped = {to_raylift_key("fusionformer", k): s for k, s in used.items()}
    assert None not in mapped and mapped == own
    fcn = sum(math.prod(s) for k, s in shapes.items() if k.startswith("fcn."))
    assert count_parameters(model.refine) == REFINE_PARAMS == layout["refine"]["params"]
    assert count_parameters(model) - REFINE_PARAMS == TRANS_PARAMS == layout["params"] - fcn
    zeros = {k: torch.zeros(s) for k, s in shapes.items()}
    assert set(convert_state_dict("fusionformer", zeros, model, "keys.json")) == set(own)


def test_import_cli_end_to_end(parity_dir, tmp_path, capsys):
    io = fixture(parity_dir)
    out = tmp_path / "imported"
    args = ["models", "import", "--from", "fusionformer", str(parity_dir / "fusionformer.ckpt.bin"), "--out", str(out),
            "--frames", "9", "--heads", "8"]
    assert main(args) == 2 and "--refine" in capsys.readouterr().err  # both files are needed
    assert main(args + ["--refine", str(parity_dir / "fusionformer.refine.ckpt.bin")]) == 0
    assert "fcn.N.*" in capsys.readouterr().out
    model, meta = load_model(out, expect_model="fusionformer", expect_frames=9)
    assert meta["model"]["variant"] == "official"
    with torch.no_grad():
        assert np.abs(model.forward_pose(torch.from_numpy(io["input"])).numpy() - io["output"]).max() < 1e-5


# ---------------------------------------------------------------------------- variants (no fixture)

TINY = dict(dim=8, L_s=1, L_c=1, heads=2, refine_hidden=16)


def test_root_depth_estimate_recovers_a_perspective_camera():
    torch.manual_seed(0)
    pose = 0.3 * torch.randn(2, 5, 17, 3)
    pose = pose - pose[:, :, :1]
    pose[..., 2] *= 0.01  # nearly planar: perspective ≈ weak perspective
    cam = torch.tensor([[2.3, 2.3, 0.02, 0.01]]).expand(2, 4)
    depth = torch.tensor([4.5, 6.0])
    z = pose[..., 2:] + depth[:, None, None, None]
    uv = pose[..., :2] * cam[:, None, None, :2] / z + cam[:, None, None, 2:4]
    torch.testing.assert_close(estimate_root_depth(pose, uv, cam), depth, rtol=2e-2, atol=0)
    # Back-projection with the true depth inverts the projection (root-relative).
    torch.testing.assert_close(back_project(pose, uv, cam, depth), pose, rtol=0, atol=1e-5)


def test_official_refinement_without_ground_truth_and_its_loss():
    torch.manual_seed(0)
    model = Fusionformer(FusionformerConfig(**TINY), 9, 17)
    x = torch.randn(2, 9, 17, 2) * 0.1
    out = forward_for_loss(model, x)
    assert out["pose"].shape == out["refined"].shape == (2, 9, 17, 3)  # official: every frame refined
    loss, logs = build_loss("fusionformer")(out, {"positions_3d": torch.randn(2, 9, 17, 3)})
    loss.backward()
    assert torch.isfinite(loss) and logs["mpjpe_refined"] > 0
    model.eval()
    with torch.no_grad():
        y = model(x)
        depth = estimate_root_depth(model.forward_pose(x), x, model.refine.default_intrinsics.expand(2, 4))
        assert torch.equal(y, model(x, root_depth=depth))  # the default is the estimate, not ground truth


def test_paper_variant_keeps_its_structure():
    model = Fusionformer(FusionformerConfig(**TINY, variant="paper"), 9, 17).eval()
    assert model.fusion.gate is None and model.fusion.conv.in_channels == 18 and model.refine.window == 1
    x = torch.randn(2, 9, 17, 2)
    out = model(x, return_all=True)
    assert out["refined"].shape == (2, 1, 17, 3)
    with pytest.raises(ValueError, match="weak-perspective"):
        model(x, root_depth=torch.ones(2))


def test_evaluation_runs_the_official_test_path(parity_dir):
    """`prediction.predict` (every protocol's forward pass) on the fixture's windows with the camera
    inputs reproduces run.py's refined output: the two flip passes averaged before one refinement.
    Refining each flip branch on its own and averaging after (raylift before) does not."""
    from pipelines.evaluate.prediction import flip_poses, predict

    model, _, io = official_model(parity_dir)
    x2 = torch.from_numpy(io["input_2d_testaug"])
    x = x2[:, 0]
    torch.testing.assert_close(flip_poses(x, "h36m"), x2[:, 1])  # the generator's flip is raylift's
    camera = {"intrinsics": torch.from_numpy(io["cam_intrinsic"])[:, :4],
              "root_depth": torch.from_numpy(io["gt_3d_center"])[:, 0, 0, 2]}
    pad = int(io["pad"])
    with torch.no_grad():
        final = predict(model, x, "h36m", flip=True, camera=camera)[:, pad : pad + 1].clone()
        final[:, :, 0] = 0
        assert np.abs(final.numpy() - io["final_pred_refined"]).max() < 1e-5
        branches = (model(x, **camera) + flip_poses(model(x2[:, 1], intrinsics=camera["intrinsics"] * torch.tensor(
            [1.0, 1.0, -1.0, 1.0]), root_depth=camera["root_depth"]), "h36m")) / 2
        branches = branches[:, pad : pad + 1].clone()
        branches[:, :, 0] = 0
        assert np.abs(branches.numpy() - io["final_pred_refined"]).max() > 0.1
