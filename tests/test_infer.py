"""`raylift infer`: COCO->H36M conversion, keypoint files, window plans, whole-sequence lifting, CLI."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from torch import nn

from pipelines.cli import main
from pipelines.evaluate.infer import lift_sequence, load_inference_output
from pipelines.evaluate.windows import plan_windows
from preprocessing.errors import DataError
from preprocessing.sources.keypoint_formats import coco_to_h36m, load_keypoints, normalize_screen, screen_to_pixels
from preprocessing.skeleton import H36M17
from tests.helpers import tiny_checkpoint



# --- COCO -> H36M -----------------------------------------------------------------------------


def hand_made_coco() -> np.ndarray:
    """(17, 3) COCO keypoints: x = 10*k, y = 100 + 3*k, score = 0.9 - 0.05*k for keypoint k."""
    k = np.arange(17, dtype=np.float64)
    return np.stack([10 * k, 100 + 3 * k, 0.9 - 0.05 * k], axis=-1)


def test_coco_to_h36m_exact_values():
    out = coco_to_h36m(hand_made_coco())
    # (x, y, score) per H36M joint, worked out by hand from the table in keypoint_formats.py.
    expected = np.array([
        [115.0, 134.5, 0.30],  # pelvis = mid(l_hip 11, r_hip 12); score min(0.35, 0.30)
        [120.0, 136.0, 0.30],  # r_hip = 12
        [140.0, 142.0, 0.20],  # r_knee = 14
        [160.0, 148.0, 0.10],  # r_ankle = 16
        [110.0, 133.0, 0.35],  # l_hip = 11
        [130.0, 139.0, 0.25],  # l_knee = 13
        [150.0, 145.0, 0.15],  # l_ankle = 15
        [85.0, 125.5, 0.30],  # spine = mid(pelvis, thorax); score min over 5, 6, 11, 12
        [55.0, 116.5, 0.60],  # thorax = mid(l_shoulder 5, r_shoulder 6)
        [0.0, 100.0, 0.90],  # neck/nose = nose 0
        [15.0, 104.5, 0.80],  # head = mid(l_eye 1, r_eye 2)
        [50.0, 115.0, 0.65],  # l_shoulder = 5
        [70.0, 121.0, 0.55],  # l_elbow = 7
        [90.0, 127.0, 0.45],  # l_wrist = 9
        [60.0, 118.0, 0.60],  # r_shoulder = 6
        [80.0, 124.0, 0.50],  # r_elbow = 8
        [100.0, 130.0, 0.40],  # r_wrist = 10
    ])
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # Without scores: same coordinates, batched over leading axes.
    batch = np.broadcast_to(hand_made_coco()[..., :2], (4, 3, 17, 2))
    np.testing.assert_allclose(coco_to_h36m(batch), np.broadcast_to(expected[:, :2], (4, 3, 17, 2)), atol=1e-5)


def test_normalisation_matches_field_convention():
    px = np.array([[0.0, 0.0], [1000.0, 1002.0], [500.0, 501.0]], dtype=np.float32)
    norm = normalize_screen(px, 1000, 1002)
    np.testing.assert_allclose(norm, [[-1, -1.002], [1, 1.002], [0, 0]], atol=1e-6)
    np.testing.assert_allclose(screen_to_pixels(norm, 1000, 1002), px, atol=1e-3)


# --- keypoint files ---------------------------------------------------------------------------


def test_load_npz_json_and_persons(tmp_path):
    coco = np.stack([hand_made_coco() + f for f in range(5)]).astype(np.float32)  # (5, 17, 3)
    np.savez(tmp_path / "one.npz", keypoints=coco, width=640, height=480)
    track = load_keypoints(tmp_path / "one.npz")
    assert (track.width, track.height, track.num_frames) == (640.0, 480.0, 5)
    np.testing.assert_allclose(track.keypoints, coco_to_h36m(coco)[..., :2])
    np.testing.assert_allclose(track.scores, coco_to_h36m(coco)[..., 2])

    # COCO result style: flat 51 numbers per frame, image size from the command line.
    (tmp_path / "flat.json").write_text(json.dumps([f.ravel().tolist() for f in coco]))
    flat = load_keypoints(tmp_path / "flat.json", width=640, height=480)
    np.testing.assert_allclose(flat.keypoints, track.keypoints, atol=1e-4)

    # Two persons, x/y only, H36M layout given as-is, size in the JSON object.
    persons = np.stack([coco[..., :2], coco[..., :2] + 7])
    (tmp_path / "two.json").write_text(json.dumps({"keypoints": persons.tolist(), "width": 640, "height": 480}))
    second = load_keypoints(tmp_path / "two.json", layout="h36m", person=1)
    np.testing.assert_allclose(second.keypoints, coco[..., :2] + 7)
    assert second.scores is None and second.person == 1
    with pytest.raises(DataError, match="2 persons"):
        load_keypoints(tmp_path / "two.json", layout="h36m")
    with pytest.raises(DataError, match="out of range"):
        load_keypoints(tmp_path / "two.json", person=2)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.npz", "not found"),
        (lambda d: _npz(d, np.zeros((4, 18, 2)), size=True), r"\(4, 18, 2\)"),
        (lambda d: _npz(d, np.zeros((4, 17, 2)), size=False), "image size unknown"),
        (lambda d: _npz(d, np.full((4, 17, 2), np.nan), size=True), "NaN"),
    ],
)
def test_bad_keypoint_files(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        load_keypoints(make(tmp_path))


def _npz(d, kp, size):
    extra = {"width": 100, "height": 100} if size else {}
    np.savez(d / "k.npz", keypoints=kp, **extra)
    return d / "k.npz"


# --- window plans and whole-sequence lifting ---------------------------------------------------


@pytest.mark.parametrize("mode", ["seq2seq", "seq2frame"])
@pytest.mark.parametrize("n", [1, 26, 27, 28, 1000])
def test_plan_predicts_every_frame_once(mode, n):
    plan = plan_windows(n, 27, mode)
    assert (plan.coverage() == 1).all()
    if mode == "seq2seq":
        chunks = -(-n // 27)
        assert plan.num_windows == chunks
        assert plan.starts[0] == -((chunks * 27 - n) // 2)  # centred (docs/field_notes.md)
    else:
        assert plan.num_windows == n
    idx = plan.indices(slice(None))
    assert idx.min() == 0 and idx.max() == n - 1  # edge padding by clipping


class EchoLifter(nn.Module):
    """Stand-in lifter: joint (x, y) -> (x, y, y^2), a mirror-equivariant map, so test-time flip
    must give back exactly the un-flipped output; counts the windows it is shown."""

    def __init__(self, mode: str, frames: int) -> None:
        super().__init__()
        self.output_mode, self.frames = mode, frames
        self.windows = 0
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, J, 2)
        assert x.shape[1] == self.frames
        self.windows += x.shape[0]
        out = torch.cat([x, x[..., 1:] ** 2], dim=-1) * self.scale  # (B, T, J, 3)
        if self.output_mode == "seq2frame":
            c = self.frames // 2
            out = out[:, c : c + 1]  # (B, 1, J, 3)
        return out


@pytest.mark.parametrize("mode, frames", [("seq2seq", 27), ("seq2frame", 9)])
def test_lift_1000_frames_each_predicted_once(mode, frames):
    n = 1000
    f = np.arange(n)[:, None]
    j = np.arange(17)[None, :]
    kp = np.stack([np.sin(0.1 * f + j), f / n + 0.01 * j], axis=-1).astype(np.float32)  # frame-unique
    model = EchoLifter(mode, frames)
    poses = lift_sequence(model, kp, frames, H36M17, flip=True, batch_size=16)
    assert poses.shape == (n, 17, 3)
    expected = np.concatenate([kp, kp[..., 1:] ** 2], axis=-1)
    expected -= expected[:, :1]
    np.testing.assert_allclose(poses, expected, atol=1e-5)  # frame f's output came from frame f
    windows = -(-n // frames) if mode == "seq2seq" else n
    assert model.windows == 2 * windows  # each window once, plus its mirror image


# --- the command ------------------------------------------------------------------------------




@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def test_infer_cli_coco_file_writes_npz_and_json(tmp_path, checkpoint, capsys):
    rng = np.random.default_rng(0)
    coco = (hand_made_coco()[None] + rng.normal(0, 3, (70, 17, 3))).astype(np.float32)
    coco[..., 2] = 0.8
    np.savez(tmp_path / "kp.npz", keypoints=coco[None], width=1280, height=720)  # (P=1, F, 17, 3)
    out = tmp_path / "res" / "walk"
    assert main(["infer", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "kp.npz"),
                 "--output", str(out), "--device", "cpu"]) == 0
    assert "lifted 70 frames" in capsys.readouterr().out
    arrays, meta = load_inference_output(f"{out}.npz")
    from_json, meta_json = load_inference_output(f"{out}.json")
    assert arrays["poses_3d"].shape == (70, 17, 3)
    assert np.isfinite(arrays["poses_3d"]).all() and np.abs(arrays["poses_3d"][:, 0]).max() == 0
    np.testing.assert_allclose(arrays["keypoints_2d"], coco_to_h36m(coco)[..., :2], atol=1e-4)
    np.testing.assert_allclose(arrays["scores"], 0.8, atol=1e-6)
    np.testing.assert_allclose(from_json["poses_3d"], arrays["poses_3d"], atol=1e-5)
    assert meta == meta_json
    assert meta["input"]["width"] == 1280 and meta["flip"] is True and meta["frames"] == 27
    assert meta["joint_names"][0] == "pelvis" and meta["num_frames"] == 70

    # One suffix -> one file; --no-flip changes the numbers (the model is not mirror-symmetric).
    assert main(["infer", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "kp.npz"),
                 "--output", str(tmp_path / "noflip.npz"), "--no-flip", "--batch-size", "1"]) == 0
    assert not (tmp_path / "noflip.json").exists()
    noflip, meta = load_inference_output(tmp_path / "noflip.npz")
    assert meta["flip"] is False
    assert not np.allclose(noflip["poses_3d"], arrays["poses_3d"], atol=1e-6)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: ["--input", str(d / "none.npz")], "not found"),
        (lambda d: ["--input", _npz(d, np.zeros((9, 18, 2)), size=True)], "expected (frames, 17"),
        (lambda d: ["--input", _npz(d, np.zeros((9, 17, 2)), size=False)], "--width and --height"),
        (lambda d: ["--input", _npz(d, np.zeros((9, 17, 2)), size=True), "--batch-size", "0"], "--batch-size"),
    ],
)
def test_infer_cli_bad_input_exit_2(tmp_path, checkpoint, capsys, setup, message):
    out = tmp_path / "out.npz"
    rc = main(["infer", "--checkpoint", str(checkpoint), *map(str, setup(tmp_path)), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.startswith("raylift infer: error:")
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_infer_cli_bad_checkpoint_exit_2(tmp_path, capsys):
    _npz(tmp_path, np.zeros((9, 17, 2)), size=True)
    rc = main(["infer", "--checkpoint", str(tmp_path / "nockpt"), "--input", str(tmp_path / "k.npz"),
               "--output", str(tmp_path / "o.npz")])
    assert rc == 2 and "not a raylift checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_infer_cmu_dev_sequence_against_ground_truth(tmp_path, cmu_dev, capsys):
    """Train a tiny MixSTE briefly on cmu-dev, then lift one held-out sequence and compare with GT."""
    from pipelines.evaluate.infer import dataset_source, find_sequence
    from preprocessing.sources import load_sequences

    other = load_sequences(dataset_source(str(cmu_dev), "C03", "gt")).sequences  # training subject
    train = [(s.keypoints_2d, s.positions_3d) for s in other if s.camera_index in (0, 2)][:8]
    ckpt = tiny_checkpoint(tmp_path / "trained", frames=27, train_steps=40, sequences=train)
    data = load_sequences(dataset_source(str(cmu_dev), "C01", "gt"))  # held-out subject
    seq = find_sequence(data.sequences, "C01", data.sequences[-1].action, "1")

    out = tmp_path / "seq.npz"
    start = time.perf_counter()
    rc = main(["infer", "--checkpoint", str(ckpt), "--dataset", str(cmu_dev), "--subject", "C01",
               "--action", seq.action, "--camera", "1", "--output", str(out), "--device", "cpu"])
    elapsed = time.perf_counter() - start
    printed = capsys.readouterr().out
    assert rc == 0 and "MPJPE" in printed
    arrays, meta = load_inference_output(out)
    assert arrays["poses_3d"].shape == arrays["gt_3d"].shape == (seq.num_frames, 17, 3)
    np.testing.assert_allclose(arrays["gt_3d"], seq.positions_3d)
    np.testing.assert_allclose(arrays["keypoints_2d"], screen_to_pixels(seq.keypoints_2d, *seq.image_size), atol=1e-3)
    assert meta["dataset"]["camera"] == seq.camera and meta["dataset"]["subject"] == "C01"
    m = meta["metrics"]
    zero_pose_mm = float(np.linalg.norm(seq.positions_3d, axis=-1).mean() * 1000)
    assert 0 < m["p_mpjpe"] <= m["mpjpe"] < zero_pose_mm  # learned something beyond "all joints at the root"

    # The same sequence through an experiment YAML naming the files: the same poses.
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(json.dumps({"data": {"source": {
        "kind": "generic", "data_3d": str(cmu_dev / "data_3d_cmu.npz"), "data_2d": str(cmu_dev / "data_2d_cmu_gt.npz"),
        "cameras": str(cmu_dev / "cameras.json"), "train_subjects": ["C03"], "test_subjects": ["C01"]}}}))
    assert main(["infer", "--checkpoint", str(ckpt), "--dataset", str(cfg), "--subject", "C01",
                 "--action", seq.action, "--camera", seq.camera, "--output", str(tmp_path / "yaml.json")]) == 0
    from_yaml, _ = load_inference_output(tmp_path / "yaml.json")
    np.testing.assert_allclose(from_yaml["poses_3d"], arrays["poses_3d"], atol=1e-5)
    print(f"cmu-dev {seq.action}: {seq.num_frames} frames, MPJPE {m['mpjpe']:.1f} mm, "
          f"P-MPJPE {m['p_mpjpe']:.1f} mm (zero pose {zero_pose_mm:.1f} mm), command {elapsed:.1f} s")
