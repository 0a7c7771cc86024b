"""Preprocessing configuration: which source to read, how to window it, where to write shards.

These dataclasses are the `data:` section of an experiment YAML. Their fields (with the source
files' content hashes and the format version) define a dataset's id, so anything that changes the
bytes of the shards must be a field here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

SourceKind = Literal["synthetic", "h36m", "generic", "mpi3dhp"]


@dataclass
class SyntheticConfig:
    """The embedded procedural motion generator (preprocessing/synthetic.py), which writes
    VideoPose3D-format files into `out_dir/<hash of the other fields>/` and reads them back.

    Each subject performs `actions_per_subject` clips, cycling through the 15 Human3.6M activity
    names ("Walking 1", "Greeting 1", ..., then "Walking 2", ...), seen by the four H36M cameras.
    Defaults: a small demo (7 subjects x 6 actions x 10 s = 84k camera-frames, < 1 s to generate).
    Human3.6M scale: actions_per_subject=30, frames_per_action=2500 (2.1M camera-frames).
    """

    subjects: list[str] = field(default_factory=lambda: ["S1", "S5", "S6", "S7", "S8", "S9", "S11"])
    actions_per_subject: int = 6  # clips per subject; the first 6 activities are the most distinct
    frames_per_action: int = 500  # frames per (subject, action) at `fps`
    fps: float = 50.0
    noise_px: float = 0.0  # detector-like 2D noise (std in pixels; 0 = ground-truth 2D)
    seed: int = 0
    out_dir: str = "data/synthetic"  # where the generated npz files and cameras JSON are written

    def validate(self) -> None:
        if not self.subjects:
            raise ValueError("synthetic.subjects must not be empty")
        if len(set(self.subjects)) != len(self.subjects) or not all(s.strip() for s in self.subjects):
            raise ValueError(f"synthetic.subjects must be distinct non-empty names, got {self.subjects}")
        if self.actions_per_subject < 1 or self.frames_per_action < 1:
            raise ValueError("synthetic.actions_per_subject and frames_per_action must be >= 1")
        if not self.fps > 0:
            raise ValueError(f"synthetic.fps must be > 0, got {self.fps}")
        if self.noise_px < 0:
            raise ValueError(f"synthetic.noise_px must be >= 0, got {self.noise_px}")
        if not self.out_dir:
            raise ValueError("synthetic.out_dir must not be empty")


@dataclass
class SourceConfig:
    """Where the raw data comes from.

    - synthetic: generated (see `synthetic`), then read through the generic VideoPose3D loader.
    - h36m: `data_3d` = data_3d_h36m.npz (32 joints), `data_2d` = any VideoPose3D 2D file
      (GT, CPN, ...), built-in Human3.6M cameras unless `cameras` is given.
    - generic: VideoPose3D-format `data_3d` (17 or 32 joints) + `data_2d` + a `cameras` JSON.
    - mpi3dhp: P-STMO's `mpi_train` (data_train_3dhp.npz) and `mpi_test` (data_test_3dhp.npz).
    Empty subject lists mean the source's standard split (H36M: S1,S5-S8 / S9,S11).
    """

    kind: SourceKind = "synthetic"
    data_3d: str = ""
    data_2d: str = ""
    cameras: str = ""
    mpi_train: str = ""
    mpi_test: str = ""
    train_subjects: list[str] = field(default_factory=list)
    test_subjects: list[str] = field(default_factory=list)
    # Training subjects held out as the validation split (per-epoch validation and
    # train.select: val); empty = no validation split.
    val_subjects: list[str] = field(default_factory=list)
    activities: list[str] = field(default_factory=list)  # optional filter; empty = all
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def validate(self) -> None:
        if self.kind in ("h36m", "generic"):
            if not self.data_3d or not self.data_2d:
                raise ValueError(f"source.kind={self.kind} needs source.data_3d and source.data_2d")
        if self.kind == "generic" and not self.cameras:
            raise ValueError("source.kind=generic needs source.cameras (a cameras JSON)")
        if self.kind == "generic" and not (self.train_subjects or self.test_subjects):
            raise ValueError("source.kind=generic needs source.train_subjects and/or test_subjects")
        both = sorted(set(self.val_subjects) & set(self.test_subjects))
        if both:
            raise ValueError(f"source.val_subjects {both} are also test subjects: validation must not see test data")
        if self.kind == "mpi3dhp" and not (self.mpi_train or self.mpi_test):
            raise ValueError("source.kind=mpi3dhp needs source.mpi_train and/or source.mpi_test")


@dataclass
class WindowConfig:
    """How sequences are cut into training/evaluation windows.

    seq2seq: non-overlapping centred chunks of `frames` (MixSTE) by default; `stride` < frames gives
    overlapping training windows. seq2frame: one window per `stride` frames, receptive field
    `frames`, target = centre frame. `flip` stores a mirrored copy of every training window.
    `multiview` puts all synchronised cameras of a sequence in one row.
    """

    mode: Literal["seq2seq", "seq2frame"] = "seq2seq"
    frames: int = 243
    stride: Optional[int] = None  # default: frames (seq2seq) or 1 (seq2frame)
    flip: bool = True
    multiview: bool = False

    def validate(self) -> None:
        if self.frames < 1:
            raise ValueError(f"windows.frames must be >= 1, got {self.frames}")
        if self.mode == "seq2frame" and self.frames % 2 == 0:
            raise ValueError(f"windows.frames must be odd for seq2frame (T = 2p+1), got {self.frames}")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"windows.stride must be >= 1, got {self.stride}")

    @property
    def effective_stride(self) -> int:
        if self.stride is not None:
            return self.stride
        return self.frames if self.mode == "seq2seq" else 1


@dataclass
class DataConfig:
    """The `data:` section: source + windows + destination root (local path or s3://bucket/prefix)."""

    source: SourceConfig = field(default_factory=SourceConfig)
    windows: WindowConfig = field(default_factory=WindowConfig)
    root: str = "data/datasets"
    rows_per_shard: int = 4096  # windows per Parquet file
    rows_per_group: int = 256  # windows per Parquet row group (streaming granularity)

    def validate(self) -> None:
        if self.rows_per_shard < 1 or self.rows_per_group < 1:
            raise ValueError("rows_per_shard and rows_per_group must be >= 1")
