"""Oracle tests of every evaluation protocol, for every shape a model's output takes.

The test splits are real raylift datasets (preprocessing/keypoints/dataset.py, read back by the evaluation's
own readers) of sequences whose 2D is the exact pinhole projection of their 3D through the
sequence's camera. The oracle models look the ground truth up from the 2D they are given (flipped
2D maps to the flipped pose), so they are exact at every window frame, padding included:

- `seq2seq`: (B, T, J, 2) -> (B, T, J, 3);
- `seq2frame`: (B, T, J, 2) -> (B, 1, J, 3), the centre frame;
- `refined`: a two-stage model like Fusionformer (`forward_pose`, then `refine_pose` with the
  camera inputs): the refinement re-derives x, y of every frame from the 2D with the camera
  intrinsics and the root depth it is given (Fusionformer's back-projection), so it is exact only
  when the pipelines hand it the right camera and the right frame's ground-truth depth;
- `refined_centre`: the same, refining the centre frame only, (B, 1, J, 3).

An exact oracle scores 0 under every protocol; one whose output is shifted by `OFFSET` metres in
depth scores exactly that offset as MPJPE and 0 as MPJVE (and as P-MPJPE, the shift being rigid),
on the joints each protocol scores as predicted: 16 of 17 where the protocol zeroes the predicted
root (Fusionformer's run.py, P-STMO's 3DHP test), which also makes the shift non-rigid.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch import nn

from models.fusionformer import back_project
from pipelines.evaluate import scoring
from preprocessing.config import DataConfig, WindowConfig
from preprocessing.keypoints.readers import load_split_arrays
from preprocessing.sequences import Sequence
from preprocessing.keypoints.dataset import build_dataset
from preprocessing.store.writer import hash_files
from preprocessing.skeleton import H36M17, MPI17, Skeleton
from preprocessing.keypoints.windows import flip_keypoints_2d, flip_positions_3d

FRAMES = 9
OFFSET = 0.012  # metres, along the camera's depth axis, on every joint
SIZE = (1000, 1002)  # H36M cameras 0 and 3


def camera_sequences(skeleton: Skeleton, subjects: dict[str, str], seed: int) -> list[Sequence]:
    """Two actions per subject (split given per subject), one camera each: random poses about a
    moving root 4-6 m in front of the camera, 2D = their exact projection, normalised."""
    rng = np.random.default_rng(seed)
    fx, fy, cx, cy = 1145.0, 1143.8, 512.5, 515.4
    w, h = SIZE
    out = []
    for s_index, (subject, split) in enumerate(subjects.items()):
        for a_index, (action, n) in enumerate((("Walking 1", 23), ("Eating", 14))):
            root = np.stack([np.linspace(-0.4, 0.3, n), np.linspace(0.1, -0.2, n), np.linspace(4.0, 6.0, n)], 1)
            rel = rng.normal(scale=0.25, size=(n, skeleton.num_joints, 3))
            rel[:, skeleton.root] = 0.0
            cam = rel + root[:, None]
            uv = np.stack([fx * cam[..., 0] / cam[..., 2] + cx, fy * cam[..., 1] / cam[..., 2] + cy], -1)
            kp = uv / w * 2 - np.array([1.0, h / w])
            out.append(Sequence(
                subject=subject, action=action, activity=action.split(" ")[0], camera=f"c{s_index}{a_index}",
                camera_index=0, split=split, layout=skeleton.name, keypoints_2d=kp.astype(np.float32),
                positions_3d=rel.astype(np.float32), trajectory=root.astype(np.float32),
                intrinsics=np.array([fx, fy, cx, cy, 0, 0, 0, 0, 0], np.float32), image_size=SIZE, fps=50.0,
                valid=np.ones(n, bool)))
    return out


class Lookup:
    """2D frame (exact float32 bytes) -> its root-relative 3D pose; mirrored frames included."""

    def __init__(self, sequences: list[Sequence], skeleton: Skeleton) -> None:
        self.skeleton = skeleton
        self.table: dict[bytes, np.ndarray] = {}
        for s in sequences:
            for kp, pos in ((s.keypoints_2d, s.positions_3d),
                            (flip_keypoints_2d(s.keypoints_2d, skeleton), flip_positions_3d(s.positions_3d, skeleton))):
                for k, p in zip(kp, pos):
                    self.table[np.ascontiguousarray(k, np.float32).tobytes()] = p

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, J, 2) -> (B, T, J, 3)
        frames = x.detach().cpu().numpy().astype(np.float32)
        out = np.stack([self.table[f.tobytes()] for f in frames.reshape(-1, *frames.shape[2:])])
        return torch.from_numpy(out.reshape(*frames.shape[:2], -1, 3))


def shift(pose: torch.Tensor, offset: float) -> torch.Tensor:
    return pose + torch.tensor([0.0, 0.0, offset], dtype=pose.dtype)


class SeqOracle(nn.Module):
    output_mode, multiview = "seq2seq", False

    def __init__(self, lookup: Lookup, offset: float = 0.0) -> None:
        super().__init__()
        self.lookup, self.offset = lookup, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return shift(self.lookup(x), self.offset)


class FrameOracle(SeqOracle):
    output_mode = "seq2frame"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1] // 2
        return super().forward(x)[:, c : c + 1]


class RefiningOracle(nn.Module):
    """Two stages like Fusionformer: the looked-up pose, then x, y of each frame back-projected from
    the 2D with the intrinsics and root depth it is handed (Fusionformer's `back_project`)."""

    output_mode, multiview = "seq2seq", False
    camera_inputs = ("intrinsics", "root_depth")

    def __init__(self, lookup: Lookup, offset: float = 0.0, centre_only: bool = False) -> None:
        super().__init__()
        self.lookup, self.offset, self.centre_only = lookup, offset, centre_only
        self.root = lookup.skeleton.root
        if centre_only:
            self.output_mode = "seq2frame"

    def forward_pose(self, x: torch.Tensor) -> torch.Tensor:
        return self.lookup(x)

    def refine_pose(self, pose: torch.Tensor, x: torch.Tensor, intrinsics: torch.Tensor,
                    root_depth: torch.Tensor) -> torch.Tensor:
        lifted = back_project(pose.double(), x.double(), intrinsics.double(), root_depth.double(), self.root)
        refined = shift(torch.cat([lifted[..., :2], pose[..., 2:].double()], -1), self.offset).float()
        if self.centre_only:
            c = x.shape[1] // 2
            refined = refined[:, c : c + 1]
        return refined

    def forward(self, x: torch.Tensor, intrinsics: torch.Tensor, root_depth: torch.Tensor) -> torch.Tensor:
        return self.refine_pose(self.forward_pose(x), x, intrinsics, root_depth)


SHAPES = {
    "seq2seq": lambda lookup, offset: SeqOracle(lookup, offset),
    "seq2frame": lambda lookup, offset: FrameOracle(lookup, offset),
    "refined": lambda lookup, offset: RefiningOracle(lookup, offset),
    "refined_centre": lambda lookup, offset: RefiningOracle(lookup, offset, centre_only=True),
}
# Which protocols score which output shape (eval.protocol's config check: mixste needs seq2seq).
CASES = [(p, s) for p in ("raylift", "videopose3d_seq2frame", "fusionformer") for s in SHAPES] + [
    ("mixste", "seq2seq"), ("mixste", "refined")]
ZEROES_ROOT = {"fusionformer"}


def _files(tmp_path, name: str) -> list[dict]:
    path = tmp_path / f"{name}.bin"
    path.write_bytes(hashlib.sha256(name.encode()).digest())
    return hash_files([str(path)])


@pytest.fixture(scope="module")
def splits(tmp_path_factory, ray_local):
    """{(layout, window mode): (test arrays, train arrays)} of real datasets, and the lookups."""
    tmp = tmp_path_factory.mktemp("oracle")
    out, lookups = {}, {}
    for skeleton, subjects in ((H36M17, {"S1": "train", "S9": "test", "S11": "test"}),
                               (MPI17, {"S1": "train", "TS1": "test", "TS2": "test"})):
        seqs = camera_sequences(skeleton, subjects, seed=len(skeleton.name))
        lookups[skeleton.name] = Lookup(seqs, skeleton)
        for mode in ("seq2seq", "seq2frame"):
            data = DataConfig(windows=WindowConfig(mode=mode, frames=FRAMES), root=str(tmp / "ds"),
                              rows_per_shard=16, rows_per_group=4)
            info = build_dataset(data, seqs, skeleton, _files(tmp, f"{skeleton.name}-{mode}"), progress=lambda m: None)
            out[(skeleton.name, mode)] = (load_split_arrays(info, "test", columns=list(scoring.TEST_COLUMNS)),
                                          load_split_arrays(info, "train", columns=["positions_3d", "mask"]))
    return out, lookups


def _score(splits, layout: str, protocol: str, shape: str, offset: float, flip: bool) -> dict:
    arrays, lookups = splits
    skeleton = {H36M17.name: H36M17, MPI17.name: MPI17}[layout]
    model = SHAPES[shape](lookups[layout], offset)
    test, train = arrays[(layout, model.output_mode)]
    return scoring.evaluate_arrays(model, test, f"mem://{layout}", skeleton, flip=flip, batch_size=16,
                                     device="cpu", train=train, protocol=protocol)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("protocol,shape", CASES)
def test_h36m_protocols_score_an_exact_model_zero_and_an_offset_exactly(splits, protocol, shape, flip):
    exact = _score(splits, H36M17.name, protocol, shape, 0.0, flip)["results"]["model"]
    for key in ("mpjpe", "p_mpjpe", "n_mpjpe", "mpjve"):
        assert exact["group_mean"][key] == pytest.approx(0.0, abs=2e-3), key
    # every real test frame once; MixSTE's windows count the overlap of the last two twice
    assert exact["frames"] == (2 * (27 + 18) if protocol == "mixste" else 2 * (23 + 14))
    shifted = _score(splits, H36M17.name, protocol, shape, OFFSET, flip)["results"]["model"]
    scored = 16 / 17 if protocol in ZEROES_ROOT else 1.0
    assert shifted["group_mean"]["mpjpe"] == pytest.approx(1000 * OFFSET * scored, abs=2e-3)
    assert shifted["frame_wise"]["mpjpe"] == pytest.approx(1000 * OFFSET * scored, abs=2e-3)
    if protocol not in ZEROES_ROOT:  # a rigid shift: Procrustes removes it (a zeroed root bends it)
        assert shifted["group_mean"]["p_mpjpe"] == pytest.approx(0.0, abs=2e-3)
    assert shifted["group_mean"]["mpjve"] == pytest.approx(0.0, abs=2e-3)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_3dhp_tables_score_an_exact_model_perfectly_and_an_offset_exactly(splits, shape):
    exact = _score(splits, MPI17.name, "raylift", shape, 0.0, True)["results"]["model"]["frame_wise"]
    assert exact["mpjpe"] == pytest.approx(0.0, abs=2e-3) and exact["pck"] == 100.0
    assert exact["auc"] == pytest.approx(100.0 * 30 / 31)  # threshold 0 mm counts no joint (err < 0)
    shifted = _score(splits, MPI17.name, "raylift", shape, OFFSET, True)["results"]["model"]["frame_wise"]
    # P-STMO zeroes the predicted pelvis: the other 16 joints are off by the offset.
    assert shifted["mpjpe"] == pytest.approx(1000 * OFFSET * 16 / 17, abs=2e-3)
    thresholds = np.linspace(0.0, 150.0, 31)
    assert shifted["pck"] == 100.0 and shifted["auc"] == pytest.approx(100.0 * np.mean(1000 * OFFSET < thresholds))


def test_baseline_row_beside_every_protocol_and_the_labels(splits):
    for protocol, shape in CASES:
        result = _score(splits, H36M17.name, protocol, shape, 0.0, True)
        baseline = result["results"]["baseline"]["group_mean"]["mpjpe"]
        assert baseline > 100.0  # the mean pose is far from random poses; the oracle scores 0
        spec = result["protocol_spec"]
        assert spec["name"] == protocol and "model inputs" in spec
        assert ("GROUND-TRUTH root depth" in spec["model inputs"]) == shape.startswith("refined")
    stride1 = _score(splits, H36M17.name, "fusionformer", "refined", 0.0, True)["protocol_spec"]
    assert "centre frame's" in stride1["model inputs"] and "predicted root zeroed" in stride1["frames_counted"]
