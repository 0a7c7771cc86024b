"""Preprocessing configuration: which source to read, how to window it, where to write shards.

These dataclasses are the `data:` section of an experiment YAML. Their fields (with the source
files' content hashes and the format version) define a dataset's id, so anything that changes the
bytes of the shards must be a field here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

SourceKind = Literal["synthetic", "h36m", "generic", "mpi3dhp", "synthetic_images", "h36m_video", "frames"]
# Sources of person crops (images), built by preprocessing/images/dataset.py instead of shards.py.
IMAGE_KINDS = ("synthetic_images", "h36m_video", "frames")
BOX_SPLITS = ("train", "val", "test")  # the splits `images.boxes_splits` may name


@dataclass
class SyntheticConfig:
    """The embedded procedural motion generator (preprocessing/sources/synthetic.py), which writes
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
    Image sources (person crops, see `ImagesConfig`):
    - synthetic_images: the synthetic motion (or, with `data_3d` + `data_2d` + `cameras`, any
      VideoPose3D-format dataset such as cmu-dev) rendered through its cameras.
    - h36m_video: `videos` = a folder of `<subject>/Videos/<action>.<camera id>.mp4` (Human3.6M's
      layout); labels from `data_3d` + `data_2d` (the GT projection file or any detector's 2D).
    - frames: `frames_dir` = a folder of `<subject>/<action>.<camera id>/<frame index>.jpg|png`;
      labels as for h36m_video.
    Empty subject lists mean the source's standard split (H36M: S1,S5-S8 / S9,S11).
    """

    kind: SourceKind = "synthetic"
    data_3d: str = ""
    data_2d: str = ""
    cameras: str = ""
    mpi_train: str = ""
    mpi_test: str = ""
    videos: str = ""  # h36m_video: root of <subject>/Videos/<action>.<camera>.mp4
    frames_dir: str = ""  # frames: root of <subject>/<action>.<camera>/<frame>.jpg|png
    train_subjects: list[str] = field(default_factory=list)
    test_subjects: list[str] = field(default_factory=list)
    # Training subjects held out as the validation split (per-epoch validation and
    # train.select: val); empty = no validation split.
    val_subjects: list[str] = field(default_factory=list)
    activities: list[str] = field(default_factory=list)  # optional filter; empty = all
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def validate(self) -> None:
        if self.kind in ("h36m", "generic", "h36m_video", "frames"):
            if not self.data_3d or not self.data_2d:
                raise ValueError(f"source.kind={self.kind} needs source.data_3d and source.data_2d")
        if self.kind == "generic" and not self.cameras:
            raise ValueError("source.kind=generic needs source.cameras (a cameras JSON)")
        if self.kind == "generic" and not (self.train_subjects or self.test_subjects):
            raise ValueError("source.kind=generic needs source.train_subjects and/or test_subjects")
        if self.kind == "h36m_video" and not self.videos:
            raise ValueError("source.kind=h36m_video needs source.videos (a folder of <subject>/Videos/<action>.<camera>.mp4)")
        if self.kind == "frames" and not self.frames_dir:
            raise ValueError("source.kind=frames needs source.frames_dir (a folder of <subject>/<action>.<camera>/<frame>.jpg)")
        if self.kind == "synthetic_images" and bool(self.data_3d) != bool(self.cameras):
            raise ValueError("source.kind=synthetic_images renders the synthetic motion, or a VideoPose3D "
                             "dataset given by both source.data_3d (+ data_2d) and source.cameras")
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

    `row_order` is the order of the training split's rows in its shards. `shuffled` (default): a
    seeded uniform permutation of all training windows (and their mirrored copies), so every
    stored row group, and so every batch streamed from a few of them, is a uniform sample of
    windows rather than a run of neighbouring, near-identical ones (the reference codes draw a
    uniform permutation of windows every epoch; `pipelines/train/data.py` says how raylift's
    per-epoch order builds on this). `sequence`: sorted by subject, action, camera, start, the
    mirrored copies after each source's originals. Validation and test splits are always in
    sequence order.
    """

    mode: Literal["seq2seq", "seq2frame"] = "seq2seq"
    frames: int = 243
    stride: Optional[int] = None  # default: frames (seq2seq) or 1 (seq2frame)
    flip: bool = True
    multiview: bool = False
    row_order: Literal["shuffled", "sequence"] = "shuffled"

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
class ImagesConfig:
    """The `data.images:` section: how person crops are cut, encoded and grouped (image sources).

    Each person is cropped around the box of its 2D keypoints, enlarged by `margin` of the box's
    longer side on every side, made square (same centre) and resized to `size` x `size` pixels.
    One row of a shard is a window of `frames` consecutive frames x `views` synchronised cameras
    (non-overlapping, so every image is stored once). `flip` mirrors a training window at read
    time with probability 1/2 (image and left/right labels). Synthetic rendering: `blur_px`
    (Gaussian radius, pixels of the crop) and `noise_std` (on 0-255) per image, after rendering;
    `occluder_prob`: the probability that an image gets one random occluding object, whose radii
    are about `occluder_size` x the person's box side (preprocessing/images/render.py, `Occluder`).
    `on_missing`: a (subject, action) without every camera is an error, or is skipped and listed
    in the manifest's `skipped` ("skip"); never dropped silently.

    Which 2D points a crop box is made around: `boxes: gt` (default) the ground-truth labels;
    `boxes: file` a detector's 2D for the splits in `boxes_splits` (default the test split, the
    H36M 2D literature's setting: train on ground-truth crops, test on detector crops), the others
    keeping ground-truth boxes. The file is `boxes_2d` (VideoPose3D format: `positions_2d[subject]
    [action]` = per camera (N, J, 2) pixels of the camera's full resolution; NaN points are left
    out of a frame's box), or, empty with `source.kind: synthetic_images`, the synthetic source's
    detector-like 2D (`data_2d_synthetic_noisy.npz`, needs `source.synthetic.noise_px > 0`).
    The labels stay the ground truth, mapped into whichever box was cut.
    """

    size: int = 64  # crop side in pixels (the paper: 224; 64-96 keeps CPU training feasible)
    margin: float = 0.15  # fraction of the keypoint box's longer side added on each side
    format: Literal["jpeg", "png"] = "jpeg"
    quality: int = 90  # JPEG quality (ignored for PNG)
    frames: int = 8  # f: frames per window (the paper: 8, 32, 128)
    views: int = 4  # V: cameras per window (the first `views` of the source's camera order)
    flip: bool = True
    blur_px: float = 0.0
    noise_std: float = 0.0
    occluder_prob: float = 0.0
    occluder_size: float = 0.25
    on_missing: Literal["error", "skip"] = "error"
    boxes: Literal["gt", "file"] = "gt"
    boxes_2d: str = ""  # boxes: file: a VideoPose3D-format 2D file ("" synthetic_images: its noisy 2D)
    boxes_splits: list[str] = field(default_factory=lambda: ["test"])  # boxes: file: the splits cropped from it
    windows_per_shard: int = 256  # rows (windows) per Parquet file
    windows_per_group: int = 16  # rows per Parquet row group (the read granularity)

    def validate(self) -> None:
        if self.windows_per_shard < 1 or self.windows_per_group < 1:
            raise ValueError("images.windows_per_shard and images.windows_per_group must be >= 1")
        if not 16 <= self.size <= 1024:
            raise ValueError(f"images.size must be in [16, 1024] pixels, got {self.size}")
        if not 0.0 <= self.margin <= 2.0:
            raise ValueError(f"images.margin must be in [0, 2] (fraction of the box side), got {self.margin}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"images.quality must be in [1, 100], got {self.quality}")
        if self.frames < 1 or self.views < 1:
            raise ValueError(f"images.frames and images.views must be >= 1, got {self.frames} and {self.views}")
        if self.blur_px < 0 or self.noise_std < 0:
            raise ValueError(f"images.blur_px and images.noise_std must be >= 0, got {self.blur_px} and {self.noise_std}")
        if not 0.0 <= self.occluder_prob <= 1.0:
            raise ValueError(f"images.occluder_prob must be a probability in [0, 1], got {self.occluder_prob}")
        if not 0.0 < self.occluder_size <= 1.0:
            raise ValueError(f"images.occluder_size must be in (0, 1] (fraction of the person's box), got {self.occluder_size}")
        if self.boxes_2d and self.boxes != "file":
            raise ValueError(f"images.boxes_2d is {self.boxes_2d!r} but images.boxes is {self.boxes!r} "
                             "(set images.boxes: file to crop around that file's 2D)")
        if not self.boxes_splits or len(set(self.boxes_splits)) != len(self.boxes_splits) \
                or not set(self.boxes_splits) <= set(BOX_SPLITS):
            raise ValueError(f"images.boxes_splits must be distinct names among {list(BOX_SPLITS)}, got {self.boxes_splits}")


@dataclass
class DataConfig:
    """The `data:` section: source + windows + destination root (local path or s3://bucket/prefix)."""

    source: SourceConfig = field(default_factory=SourceConfig)
    windows: WindowConfig = field(default_factory=WindowConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)  # image sources only
    root: str = "data/datasets"
    rows_per_shard: int = 4096  # windows per Parquet file
    rows_per_group: int = 256  # windows per Parquet row group (streaming granularity)
    # A prepared dataset to train/tune/evaluate on instead of preparing one from `source`: its URI
    # (s3://bucket/prefix/<id>, a local directory) or its id under `root`. With it, the source
    # files are never read, so a cluster needs only the Parquet windows.
    dataset: Optional[str] = None
    # How long a build waits when another run (a preprocess job, a tune trial) holds the lease of
    # the same dataset id: it then finds that run's published dataset (a cache hit). A bound, so
    # a stuck holder ends in an error naming it; 0 refuses at once. Not part of the dataset id.
    lease_wait_s: float = 3600.0

    def validate(self) -> None:
        if self.dataset is not None and not self.dataset.strip():
            raise ValueError("data.dataset must be a dataset URI or id, got an empty string")
        if not self.lease_wait_s >= 0:
            raise ValueError(f"data.lease_wait_s must be >= 0 seconds, got {self.lease_wait_s}")
        if self.rows_per_shard < 1 or self.rows_per_group < 1:
            raise ValueError("rows_per_shard and rows_per_group must be >= 1")
