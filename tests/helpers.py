"""What several test modules share: small sequences, configs and stand-in models built for tests.

Test modules import from here (and fixtures come from conftest.py); no test module imports another.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipelines.config import config_from_dict
from preprocessing.config import DataConfig, ImagesConfig, SourceConfig, SyntheticConfig, WindowConfig
from preprocessing.sequences import Sequence
from preprocessing.skeleton import H36M17
from preprocessing.store.writer import hash_files


def make_sequence(n: int, split: str = "train", camera: str = "c0", camera_index: int = 0,
                  subject: str = "S1", action: str = "Walking 1", joints: int = 17, seed: int = 0,
                  valid: np.ndarray | None = None, layout: str = "h36m", width: int = 1000) -> Sequence:
    """A random but well-formed Sequence (frame f of keypoints_2d has x of joint 0 = f, for tracing)."""
    rng = np.random.default_rng(seed)
    kp = rng.standard_normal((n, joints, 2)).astype(np.float32)
    kp[:, 0, 0] = np.arange(n)
    return Sequence(
        subject=subject, action=action, activity=action.split(" ")[0], camera=camera,
        camera_index=camera_index, split=split, layout=layout, keypoints_2d=kp,
        positions_3d=rng.standard_normal((n, joints, 3)).astype(np.float32),
        trajectory=rng.standard_normal((n, 3)).astype(np.float32),
        intrinsics=np.array([1145.0, 1143.8, 512.5, 515.4, -0.2, 0.24, -0.0028, -0.0016, -0.0008], np.float32),
        image_size=(width, 1002), fps=50.0, valid=np.ones(n, bool) if valid is None else valid,
    )


def sequences():
    """Two training subjects x 2 cameras, one test subject with invalid frames; odd lengths."""
    valid = np.ones(45, bool)
    valid[[3, 20, 44]] = False
    return [
        make_sequence(53, subject="S1", camera="c0", camera_index=0, seed=1),
        make_sequence(53, subject="S1", camera="c1", camera_index=1, seed=2, width=1200),
        make_sequence(30, subject="S5", action="Eating", camera="c0", camera_index=0, seed=3),
        make_sequence(31, subject="S5", action="Eating", camera="c1", camera_index=1, seed=4),
        make_sequence(45, split="test", subject="S9", camera="c0", camera_index=0, seed=5, valid=valid),
        make_sequence(45, split="test", subject="S9", camera="c1", camera_index=1, seed=6, valid=valid),
    ]


def source_files(tmp_path: Path, content: bytes = b"source bytes") -> list[dict]:
    path = tmp_path / "source.bin"
    path.write_bytes(content)
    return hash_files([str(path)])


def shard_config(root: Path, **windows) -> DataConfig:
    w = {"frames": 16, **windows}
    return DataConfig(windows=WindowConfig(**w), root=str(root), rows_per_shard=7, rows_per_group=3)


def synthetic_cfg(root, *, name: str = "tiny", frames_per_action: int = 120, storage=None, **train):
    """A tiny MixSTE experiment on synthetic S1/S9 data under `root`; `train` overrides train keys."""
    return config_from_dict({
        "name": name,
        "data": {
            "source": {"kind": "synthetic", "synthetic": {
                "subjects": ["S1", "S9"], "actions_per_subject": 1, "frames_per_action": frames_per_action,
                "out_dir": str(root / "synthetic")}},
            "windows": {"mode": "seq2seq", "frames": 9},
            "root": str(root / "datasets"),
            "rows_per_group": 16,
        },
        "model": {"name": "mixste", "dim": 16, "depth": 1, "heads": 2, "drop_path_rate": 0.0},
        "train": {"epochs": 2, "batch_size": 16, "lr": 2e-3, "num_workers": 0, "shuffle_buffer": 32,
                  "storage_path": str(storage if storage is not None else root / "runs"), "evaluate": False,
                  **train},
        "eval": {"batch_size": 64},
    })


class DepthlessLift(nn.Module):
    """(x, y) -> (x, y, 0) per joint: exact in x/y, so the error is |z| of the target.
    Flip-equivariant, so test-time flip leaves it unchanged."""

    output_mode = "seq2seq"
    multiview = False

    def __init__(self, seq2frame: bool = False):
        super().__init__()
        self.seq2frame = seq2frame

    def forward(self, x):
        out = torch.cat([x, torch.zeros_like(x[..., :1])], dim=-1)
        if self.seq2frame:
            c = x.shape[1] // 2
            out = out[:, c : c + 1]
        return out


def eval_sequence(subject, action, camera, n, layout=H36M17, valid=None, seed=0, step=0.01):
    """Targets with z = step * frame on every non-root joint (so the depth error grows by `step`
    per frame and the velocity error is exactly `step` per step), 2D = the target's x, y."""
    rng = np.random.default_rng(seed)
    pos = rng.normal(scale=0.2, size=(n, 17, 3)).astype(np.float32)
    pos[:, :, 2] = step * np.arange(n, dtype=np.float32)[:, None]
    pos[:, layout.root] = 0.0
    return {
        "subject": subject, "action": action, "activity": action.split(" ")[0], "camera": camera,
        "pos": pos, "kp": pos[:, :, :2].copy(), "valid": np.ones(n, bool) if valid is None else valid,
    }


def windows_of(seqs, frames, mode="seq2seq", flipped_copies=False):
    """Test-split arrays in the windows' schema (docs/data_format.md): seq2seq = non-overlapping centred chunks,
    edge-padded; seq2frame = one window per frame, target = centre frame."""
    cols = {k: [] for k in ("keypoints_2d", "positions_3d", "mask", "subject", "action", "activity",
                            "camera", "start", "sequence_length", "flipped")}
    for s in seqs:
        n = len(s["pos"])
        if mode == "seq2seq":
            chunks = math.ceil(n / frames)
            starts = np.arange(chunks) * frames - (chunks * frames - n) // 2
        else:
            starts = np.arange(n) - frames // 2
        for st in starts:
            raw = st + np.arange(frames)
            idx = np.clip(raw, 0, n - 1)
            real = (raw >= 0) & (raw < n) & s["valid"][idx]
            kp, pos = s["kp"][idx], s["pos"][idx]
            mask = real.astype(np.float32)
            if mode == "seq2frame":
                pos, mask = pos[frames // 2 : frames // 2 + 1], mask[frames // 2 : frames // 2 + 1]
            for flip in ([False, True] if flipped_copies else [False]):
                cols["keypoints_2d"].append(kp)
                cols["positions_3d"].append(pos)
                cols["mask"].append(mask)
                for k in ("subject", "action", "activity", "camera"):
                    cols[k].append(s[k])
                cols["start"].append(st)
                cols["sequence_length"].append(n)
                cols["flipped"].append(flip)
    out = {k: np.stack(v) if k in ("keypoints_2d", "positions_3d", "mask") else np.array(v) for k, v in cols.items()}
    out["start"] = out["start"].astype(np.int32)
    return out


def synthetic_data(tmp: Path, frames: int = 6, noise_px: float = 0.0, **images) -> DataConfig:
    cfg = SyntheticConfig(subjects=["S1", "S9"], actions_per_subject=1, frames_per_action=frames,
                          noise_px=noise_px, out_dir=str(tmp / "synthetic"))
    return DataConfig(source=SourceConfig(kind="synthetic_images", synthetic=cfg),
                      images=ImagesConfig(size=32, frames=4, **images), root=str(tmp / "datasets"))


def video_data(tmp: Path, kind: str, root: Path, noise_px: float = 0.0, **images) -> DataConfig:
    """The synthetic motion of `synthetic_data(tmp, noise_px=...)`, read back through the
    h36m_video / frames sources (videos or frame folders under `root`), labelled with its GT 2D."""
    from preprocessing.sources.synthetic import ensure_synthetic

    files = ensure_synthetic(synthetic_data(tmp, noise_px=noise_px).source.synthetic)
    source = SourceConfig(kind=kind, data_3d=files.data_3d, data_2d=files.gt_2d, cameras=files.cameras,
                          train_subjects=["S1"], test_subjects=["S9"],
                          **({"videos": str(root)} if kind == "h36m_video" else {"frames_dir": str(root)}))
    return DataConfig(source=source, images=ImagesConfig(size=32, frames=4, **images), root=str(tmp / "datasets"))


TINY_MPSTR = {"name": "mpstr", "img_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [1, 1],
              "num_heads": [2, 4], "window_size": 4, "token_dim": 32, "relation_depth": 1, "relation_heads": 4,
              "drop_path_rate": 0.0, "relation_drop_path_rate": 0.0}


def image_raw(tmp: Path, **train) -> dict:
    return {
        "name": "mpstr_tiny",
        "data": {"source": {"kind": "synthetic_images",
                            "synthetic": {"subjects": ["S1", "S9"], "actions_per_subject": 1, "frames_per_action": 12,
                                          "out_dir": str(tmp / "synthetic")}},
                 "images": {"size": 32, "frames": 4, "views": 4}, "root": str(tmp / "datasets")},
        "model": dict(TINY_MPSTR),
        "train": {"epochs": 1, "batch_size": 2, "num_workers": 0, "storage_path": str(tmp / "runs"), **train},
        "eval": {"flip": False, "batch_size": 4},
    }


def assert_gradients_reach_every_parameter(model: torch.nn.Module, what: str) -> None:
    """After a backward pass: every parameter has a finite, non-zero gradient."""
    for key, p in model.named_parameters():
        assert p.grad is not None, f"{what}: no gradient reaches {key}"
        assert torch.isfinite(p.grad).all(), f"{what}: non-finite gradient at {key}"
        assert p.grad.abs().sum() > 0, f"{what}: zero gradient at {key}"


TINY_MIXSTE = {"name": "mixste", "dim": 32, "depth": 2, "heads": 4, "drop_path_rate": 0.0}


def tiny_checkpoint(path, frames=27, train_steps=0, sequences=None):
    """A tiny MixSTE checkpoint; optionally trained for a few steps on (keypoints, 3D) sequences."""
    from models.checkpoint import save_checkpoint
    from models.registry import build_model, parse_model_config
    from pipelines.evaluate.windows import plan_windows

    torch.manual_seed(0)
    cfg = parse_model_config(dict(TINY_MIXSTE), "model")
    model = build_model(cfg, frames=frames, joints=17)
    if train_steps:
        xs, ys = [], []
        for kp2d, pos3d in sequences:
            plan = plan_windows(len(kp2d), frames, "seq2seq")
            idx = plan.indices(slice(None))
            xs.append(kp2d[idx])
            ys.append(pos3d[idx])
        x, y = torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
        gen = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(train_steps):
            b = torch.randint(0, len(x), (8,), generator=gen)
            loss = (model(x[b]) - y[b]).norm(dim=-1).mean()  # MPJPE
            opt.zero_grad()
            loss.backward()
            opt.step()
    meta = {"model": {**TINY_MIXSTE}, "frames": frames, "joints": 17, "layout": "h36m", "epoch": 0,
            "dataset_id": None, "metrics": {}, "config": None}
    save_checkpoint(path, model.state_dict(), meta)
    return path


def tune_demo_raw(tmp_path: Path, **tune) -> dict:
    """configs/tune_demo.yaml (tiny MixSTE on synthetic data) with every output under tmp_path;
    `tune` updates its tune section."""
    import yaml

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "tune_demo.yaml").read_text())
    raw["data"]["source"]["synthetic"]["out_dir"] = str(tmp_path / "synthetic")
    raw["data"]["root"] = str(tmp_path / "datasets")
    raw["train"]["storage_path"] = str(tmp_path / "runs")
    raw["tune"]["storage_path"] = str(tmp_path / "tune")
    raw["tune"].update(tune)
    return raw
