"""Experiment configuration: the YAML a user writes, as typed, validated dataclasses.

```yaml
name: mixste_h36m_cpn
data:    {source: {...}, windows: {mode: seq2seq, frames: 243}, root: data/datasets}
model:   {name: mixste, dim: 512, depth: 8}
train:   {epochs: 160, batch_size: 4, lr: 4.0e-5, num_workers: 2, storage_path: runs}
eval:    {flip: true}
tune:    {...}          # only for `raylift tune`
```
`load_config(path, overrides)` applies `--set a.b=v` overrides before validation, so an override
is checked exactly like a key in the file.
"""
from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Optional

from models.registry import model_class, parse_model_config
from preprocessing.schema import ConfigError, apply_overrides, load_yaml, parse_dataclass, to_dict
from preprocessing.config import DataConfig


# cosine_warmup's defaults relative to train.lr: the authors' WARMUP_LR / BASE_LR and MIN_LR / BASE_LR
# (WUJINHUAN/3D-human-pose configs/swin_pose.py: 5e-7, 5e-8 and 5e-4).
WARMUP_LR_RATIO = 1e-3
MIN_LR_RATIO = 1e-4


@dataclass
class TrainConfig:
    """Optimisation, checkpointing and Ray Train scaling. Defaults follow MixSTE; shipped configs
    set each paper's values.

    Checkpoints: one per epoch under `<storage_path>/<name>/checkpoint_epochNNNN`. The `keep_best`
    checkpoints with the lowest validation MPJPE are kept, and the latest one always is as well
    (Ray Train's retention rule), so a run directory holds at most `keep_best + 1` checkpoints.
    """

    epochs: int = 10
    batch_size: int = 4  # windows per worker per step (ignored when batch_frames is set)
    # Batch size in frames, as MixSTE's `-b` counts it: windows per step = max(1, batch_frames // T),
    # so a sweep over T gives every trial the same frames and optimiser steps per epoch.
    batch_frames: Optional[int] = None
    lr: float = 4e-5
    weight_decay: float = 0.1
    optimizer: Literal["adamw", "adam"] = "adamw"
    amsgrad: bool = False  # the AMSGrad variant of Adam/AdamW (Fusionformer's run.py)
    betas: tuple[float, float] = (0.9, 0.999)
    # Schedule (pipelines/train/schedules.py): exponential, step and exponential_step set the lr of
    # each epoch (lr * factor(e - 1)); cosine_warmup that of each optimiser step (timm's cosine).
    lr_schedule: Literal["exponential", "step", "exponential_step", "cosine_warmup"] = "exponential"
    lr_decay: float = 0.99  # exponential, exponential_step: x lr_decay after every epoch
    lr_step_every: int = 5  # step, exponential_step: x lr_step_factor after every lr_step_every-th epoch
    # (exponential_step: instead of lr_decay for that epoch, as Fusionformer's run.py)
    lr_step_factor: float = 0.5
    warmup_epochs: int = 0  # cosine_warmup: linear warm-up epochs before the cosine decay
    # cosine_warmup: the lr of the first step, rising linearly to `lr` over warmup_epochs; null:
    # lr * 1e-3, the authors' ratio (WUJINHUAN/3D-human-pose configs/swin_pose.py: WARMUP_LR 5e-7,
    # BASE_LR 5e-4).
    warmup_lr: Optional[float] = None
    # cosine_warmup: the lr the cosine decays to; null: lr * 1e-4, the authors' ratio (same file:
    # MIN_LR 5e-8, BASE_LR 5e-4).
    min_lr: Optional[float] = None
    # Weight decay groups (pipelines/train/param_groups.py). all: every parameter decays (the
    # lifters' authors: one AdamW group). skip_1d_and_bias: none for 1-D parameters (norm weights,
    # biases) and any named *.bias (WUJINHUAN/3D-human-pose utils/optimizer.py set_weight_decay).
    decay_groups: Literal["all", "skip_1d_and_bias"] = "all"
    # Layer-wise lr decay (BEiT, timm's param_groups_layer_decay): layer i of a model's L layers
    # (its timm group_matcher) trains at lr * layer_decay ** (L - 1 - i), the head at lr. null: off.
    layer_decay: Optional[float] = None
    clip_grad: Optional[float] = None  # max gradient norm (None: no clipping)
    loss: Literal["auto", "mixste", "mpjpe", "fusionformer", "multiview"] = "auto"
    num_workers: int = 2  # Ray Train workers; 0 runs the loop in the driver process
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    resources_per_worker: dict[str, float] = field(default_factory=dict)  # extra custom resources
    storage_path: str = "runs"  # local directory (shared by all nodes) or s3://bucket/prefix
    keep_best: int = 1  # checkpoints kept by lowest validation MPJPE (the latest is kept too)
    max_failures: int = 3  # worker/node failures survived by restoring the last checkpoint
    # Training numerics. fp32 (default): the authors' numerics (all four papers train in fp32).
    # bf16: the forward pass under bfloat16 autocast on GPU (losses stay fp32; ignored on CPU).
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False  # torch.compile the model
    seed: int = 0
    # Training order (pipelines/train/data.py). The rows of the train split are stored as a seeded
    # uniform permutation of its windows (data.windows.row_order: shuffled). global: each epoch every
    # worker reads its share of a (seed, epoch) permutation of the split's row groups, and draws its
    # batches from a buffer of `shuffle_buffer` windows (resumable: the order depends on seed and
    # epoch only). local: the manifest order through Ray Train's dataset split, with the same buffer.
    shuffle: Literal["global", "local"] = "global"
    # Windows in each worker's shuffle buffer; null: the worker's whole epoch share, up to
    # `shuffle_buffer_mb` of windows (so a split that fits is drawn as a uniform permutation).
    shuffle_buffer: Optional[int] = None
    shuffle_buffer_mb: int = 128
    prefetch_batches: int = 4
    max_windows_per_epoch: Optional[int] = None  # cap on training windows per epoch (None: all)
    val_batch_size: int = 64  # windows per validation batch
    max_val_windows: Optional[int] = None  # cap on validation windows per epoch (None: all)
    evaluate: bool = True  # evaluate the selected checkpoint with the full protocol after training
    # Which checkpoint the final evaluation scores, and where per-epoch validation MPJPE is measured.
    # test: lowest MPJPE on the test split (the papers' habit: chosen on the split it is then scored
    # on; results say so). val: lowest MPJPE on the validation split (data.source.val_subjects).
    # last: the last epoch (validation on the val split if there is one, else on test).
    select: Literal["test", "val", "last"] = "test"
    # Copy the job's Ray session logs (driver, its workers', each node's raylet) to
    # `<storage_path>/<name>/logs/<submission id>/` when the run ends, failed or not
    # (cluster/logship.py). A KubeRay RayJob deletes its cluster, node disks and session logs
    # included, 600 s after the job ends (ttlSecondsAfterFinished). auto: only when running as a
    # submitted Ray job (a laptop keeps its session logs on its own disk); always; never.
    # `raylift tune` reads it from the base config.
    ship_logs: Literal["auto", "always", "never"] = "auto"

    def validate(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"train.epochs must be >= 1, got {self.epochs}")
        if self.batch_frames is not None and self.batch_frames < 1:
            raise ValueError(f"train.batch_frames must be >= 1 or null, got {self.batch_frames}")
        if self.batch_size < 1 or self.val_batch_size < 1:
            raise ValueError(
                f"train.batch_size and train.val_batch_size must be >= 1, got {self.batch_size}, "
                f"{self.val_batch_size}"
            )
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"train.betas must be in [0, 1), got {list(self.betas)}")
        if self.num_workers < 0:
            raise ValueError(f"train.num_workers must be >= 0, got {self.num_workers}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"train.lr_decay must be in (0, 1], got {self.lr_decay}")
        if self.lr_step_every < 1:
            raise ValueError(f"train.lr_step_every must be >= 1, got {self.lr_step_every}")
        if not 0 < self.lr_step_factor <= 1:
            raise ValueError(f"train.lr_step_factor must be in (0, 1], got {self.lr_step_factor}")
        if self.warmup_epochs < 0:
            raise ValueError(f"train.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.lr_schedule == "cosine_warmup" and self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"train.warmup_epochs ({self.warmup_epochs}) must be < train.epochs ({self.epochs}) "
                "for lr_schedule cosine_warmup"
            )
        self._validate_cosine()
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ValueError(f"train.layer_decay must be in (0, 1] or null, got {self.layer_decay}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"train.clip_grad must be > 0 or null, got {self.clip_grad}")
        if self.keep_best < 1:
            raise ValueError(f"train.keep_best must be >= 1, got {self.keep_best}")
        if self.max_failures < 0:
            raise ValueError(f"train.max_failures must be >= 0, got {self.max_failures}")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker <= 0:
            raise ValueError("train.cpus_per_worker and train.gpus_per_worker must be > 0")
        for key in ("max_windows_per_epoch", "max_val_windows"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"train.{key} must be >= 1 or null, got {value}")
        if (self.shuffle_buffer is not None and self.shuffle_buffer < 0) or self.prefetch_batches < 0:
            raise ValueError("train.shuffle_buffer and train.prefetch_batches must be >= 0")
        if self.shuffle_buffer_mb < 1:
            raise ValueError(f"train.shuffle_buffer_mb must be >= 1, got {self.shuffle_buffer_mb}")

    def _validate_cosine(self) -> None:
        """warmup_lr and min_lr: set only for cosine_warmup, each in [0, lr]."""
        for key in ("warmup_lr", "min_lr"):
            value = getattr(self, key)
            if value is None:
                continue
            if self.lr_schedule != "cosine_warmup":
                raise ValueError(f"train.{key} applies to lr_schedule cosine_warmup only (lr_schedule is "
                                 f"{self.lr_schedule}); expected null")
            if not 0 <= value <= self.lr:
                raise ValueError(f"train.{key} must be in [0, train.lr={self.lr}] or null, got {value}")

    def cosine_lrs(self) -> tuple[float, float]:
        """(warmup_lr, min_lr) of cosine_warmup, null ones at the authors' ratios to `lr`."""
        warmup = self.lr * WARMUP_LR_RATIO if self.warmup_lr is None else self.warmup_lr
        floor = self.lr * MIN_LR_RATIO if self.min_lr is None else self.min_lr
        return warmup, floor

    def windows_per_batch(self, frames: int) -> int:
        """Windows per worker per step for windows of `frames` frames: `batch_frames // frames`
        (at least 1) when `batch_frames` is set, else `batch_size`."""
        if self.batch_frames is None:
            return self.batch_size
        return max(1, self.batch_frames // frames)


@dataclass
class EvalConfig:
    flip: bool = True  # test-time flip augmentation
    batch_size: int = 64
    # bf16 autocast for evaluation and per-epoch validation forwards (CUDA only). Off: scores are
    # fp32 unless asked, whatever train.precision says (it sets only the training forwards).
    bf16: bool = False
    # What the tables reproduce (pipelines/evaluate/protocol_defs.py): raylift (each real frame
    # once), mixste (MixSTE's test windows), videopose3d_seq2frame (PoseFormer, CrossFormer),
    # fusionformer (centre frame of stride-1 windows after refinement).
    protocol: Literal["raylift", "mixste", "videopose3d_seq2frame", "fusionformer"] = "raylift"


@dataclass
class TuneConfig:
    """`raylift tune`: a search space over any config key (see pipelines/tune/driver.py)."""

    space: dict[str, Any] = field(default_factory=dict)  # dotted key -> {grid|choice|uniform|loguniform|branches: ...}
    # random: Tune's grid/random variants (num_samples repeats the grids); optuna, hyperopt, bohb:
    # model-based searches through Ray Tune's integrations, num_samples trials in all
    # (pipelines/tune/search.py).
    search: Literal["random", "optuna", "hyperopt", "bohb"] = "random"
    sampler: Literal["tpe", "nsga2"] = "tpe"  # optuna's sampler (nsga2: NSGA-II, for several objectives)
    seed: int = 0  # seeds every search's random state
    num_samples: int = 1
    metric: Optional[str] = None  # the trials' validation metric; default: val_mpjpe, or val_px for image models
    # Several objectives in order, metric -> min|max, e.g. {val_mpjpe: min, macs_per_frame: min}
    # (search optuna, or random with scheduler fifo); the first is `metric`. Empty: {metric: min}.
    metrics: dict[str, str] = field(default_factory=dict)
    # hyperband: HyperBandForBOHB, the scheduler of search bohb; pbt: population-based training
    # (pipelines/tune/pbt.py), which perturbs the space's lr / weight decay / drop path as trials run.
    scheduler: Literal["asha", "fifo", "hyperband", "pbt"] = "asha"
    grace_period: int = 1
    reduction_factor: int = 2
    perturbation_interval: int = 1  # pbt: epochs between a trial's exploit/explore decisions
    quantile_fraction: float = 0.25  # pbt: the bottom fraction copies the top fraction (Tune's default)
    resample_probability: float = 0.25  # pbt: explore by resampling from the space, else x0.8 / x1.2
    max_concurrent: int = 0  # 0: as many as `resources` (else the cluster's resources now) allow
    # The resources the search is meant to use, e.g. {GPU: 8}: concurrency = how many trials'
    # Train workers fit in them (Ray's Tune guide sizes max_concurrent_trials this way). Empty: the
    # cluster's resources at start, which on an autoscaling cluster may be far fewer than it will have.
    resources: dict[str, float] = field(default_factory=dict)
    # What each trial's driver (the function calling TorchTrainer.fit, where Train V2 places its
    # controller) requests. Empty: {raylift_driver: 1} when a node advertises that resource (the
    # on-demand head in cluster/*.yaml and kuberay/), else a sliver of a CPU (a laptop).
    driver_resources: dict[str, float] = field(default_factory=dict)
    max_failures: int = 1  # retries of a failed trial
    storage_path: str = "runs/tune"  # local directory or s3://...: Tune's state and raylift's tables

    def validate(self) -> None:
        for key in ("resources", "driver_resources"):
            for name, amount in getattr(self, key).items():
                if not amount >= 0:
                    raise ValueError(f"tune.{key}.{name} must be >= 0, got {amount}")
        if not 0 < self.quantile_fraction <= 0.5:
            raise ValueError(f"tune.quantile_fraction must be in (0, 0.5], got {self.quantile_fraction}")
        if not 0 <= self.resample_probability <= 1:
            raise ValueError(f"tune.resample_probability must be in [0, 1], got {self.resample_probability}")
        for name, mode in self.metrics.items():
            if mode not in ("min", "max"):
                raise ValueError(f"tune.metrics.{name}: expected min or max, got {mode!r}")
        if self.metrics:
            first = next(iter(self.metrics))
            if self.metric not in (None, first):
                raise ValueError(f"tune.metric {self.metric!r} is not the first of tune.metrics ({first!r}): give one of them")
            self.metric = first


# MLflow tracking URI schemes `tracking.mlflow_uri` may name (anything else with a scheme is refused).
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "file")


@dataclass
class TrackingConfig:
    """Optional MLflow tracking of `raylift train` and `raylift tune` (pipelines/train/tracking.py).
    Changes neither dataset ids nor what a resumed run must match (it may differ on resume)."""

    # Where runs go. A local directory: raylift keeps an SQLite store there (<dir>/mlflow.db, artifacts
    # under <dir>/artifacts). Or an MLflow tracking URI: http(s)://host:port, sqlite:///..., ...
    # (file: stores need MLFLOW_ALLOW_FILE_STORE=true in MLflow 3). Empty: off, unless the environment
    # sets MLFLOW_TRACKING_URI (then that).
    mlflow_uri: str = ""
    experiment: Optional[str] = None  # the MLflow experiment; null: the config's name (tune: the search's)
    artifacts: bool = True  # upload the run's result files (config, metrics.csv, plots, tables)

    def validate(self) -> None:
        from urllib.parse import urlsplit

        scheme = urlsplit(self.mlflow_uri).scheme
        if scheme and scheme not in TRACKING_SCHEMES:
            raise ValueError(
                f"tracking.mlflow_uri {self.mlflow_uri!r}: unknown scheme {scheme!r} (expected a local "
                f"directory or a URI starting {', '.join(s + ':' for s in TRACKING_SCHEMES)})")
        if self.experiment is not None and not self.experiment.strip():
            raise ValueError("tracking.experiment must be a non-empty name or null")

    @staticmethod
    def parse(value: Any, where: str) -> Optional["TrackingConfig"]:
        """The `tracking:` section (null: none), with the section's own one-line errors."""
        return None if value is None else parse_dataclass(TrackingConfig, value, where)


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = field(default=None, metadata={"parse": parse_model_config})
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tune: Optional[TuneConfig] = None
    # MLflow tracking (off unless a URI is set); parsed by its own dataclass for precise errors
    tracking: Optional[TrackingConfig] = field(default=None, metadata={"parse": TrackingConfig.parse})

    def validate(self) -> None:
        if self.model is None:
            self.model = parse_model_config({}, "model")
        cls = model_class(self.model.name)
        from preprocessing.config import IMAGE_KINDS

        images_in = getattr(cls, "input_kind", "keypoints") == "images"
        image_source = self.data.source.kind in IMAGE_KINDS
        if images_in != image_source:
            want = f"an image source ({', '.join(IMAGE_KINDS)})" if images_in else "a keypoint source"
            raise ValueError(
                f"model {self.model.name!r} takes {'images' if images_in else '2D keypoints'}, but "
                f"data.source.kind is {self.data.source.kind!r}: set data.source.kind to {want}"
            )
        if self.tune is not None and self.tune.metric is None:
            self.tune.metric = "val_px" if images_in else "val_mpjpe"  # what the model's training task reports
        if images_in:
            # Image windows are cut by data.images (f frames x V views); data.windows mirrors them
            # so checkpoints, resume checks and tables read T from the usual place.
            self.data.windows.frames = self.data.images.frames
            self.data.windows.mode = cls.output_mode
            self.data.windows.multiview = bool(cls.multiview)
            return
        if self.data.windows.mode != cls.output_mode:
            raise ValueError(
                f"model {self.model.name!r} is {cls.output_mode} but data.windows.mode is "
                f"{self.data.windows.mode!r}"
            )
        need = {"mixste": "seq2seq", "fusionformer": "seq2seq", "videopose3d_seq2frame": "seq2frame"}.get(self.eval.protocol)
        if need is not None and need != cls.output_mode:
            raise ValueError(
                f"eval.protocol {self.eval.protocol!r} scores {need} models, but model {self.model.name!r} is "
                f"{cls.output_mode}"
            )
        if self.train.select == "val" and not self.data.source.val_subjects:
            raise ValueError("train.select=val needs a validation split: set data.source.val_subjects")
        if bool(self.data.windows.multiview) != bool(cls.multiview):
            raise ValueError(
                f"model {self.model.name!r} needs data.windows.multiview={str(cls.multiview).lower()}"
            )

    def to_dict(self) -> dict:
        return to_dict(self)


def config_from_dict(raw: dict, overrides: Optional[list[str]] = None) -> ExperimentConfig:
    return parse_dataclass(ExperimentConfig, apply_overrides(raw, overrides or []), "")


def load_config(path: str, overrides: Optional[list[str]] = None) -> ExperimentConfig:
    """Read `path`, apply `--set` overrides, validate. Errors name the file and the key."""
    raw = load_yaml(path)
    try:
        return config_from_dict(raw, overrides)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


# ----------------------------------------------------------------------------- locations
# Where a command reads and writes: its path and URI arguments and config keys, with their role.
# A command declares each path argument with `add_location_argument(parser, "--out", role="output")`:
# the parser then refuses an empty value (one line, exit 2) and records the argument's role in the
# parsed namespace (`location_roles`). Config-driven commands record how to list the config's
# locations (`config_locations`, see `add_config_arguments`). `raylift submit` reads both before it
# submits (cluster/submit.py): a job runs inside Ray's temporary copy of the working directory, so
# a relative output would be written there and lost, and a relative input that is not uploaded
# would be missing.

# "staged": a source file that a command reading a prepared dataset may lack (it then uses the
# dataset staged under data.root from the same config, preprocessing/store/staged.py);
# "dataset": an input that may also be a dataset id under the datasets root (no path separator);
# "tracking": an MLflow store the command writes (a directory, `sqlite:///FILE`, or a server's URI).
Role = Literal["input", "output", "staged", "dataset", "tracking"]


class PathArg(NamedTuple):
    """One location a command uses: `key` is a flag (`--out`) or a config key (`data.root`)."""

    key: str
    value: str
    role: Role


def location(text: str) -> str:
    """argparse type of a path or URI argument: anything but an empty string."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path or URI, got an empty string")
    return text


def add_location_argument(parser: Any, *flags: str, role: Role, **kwargs: Any) -> argparse.Action:
    """`parser.add_argument(*flags, **kwargs)` for a path or URI the command reads or writes, with
    its `role` (see `Role`); `parser` may be an argument group."""
    action = parser.add_argument(*flags, type=location, **kwargs)
    roles = dict(parser.get_default("location_roles") or {})
    roles[action.dest] = (action.option_strings[0] if action.option_strings else action.dest, role)
    parser.set_defaults(location_roles=roles)
    return action


def data_locations(data: Any, dataset: Optional[str], staged: bool) -> list[PathArg]:
    """What the `data:` section makes a command read or write. With a prepared dataset named
    (`dataset`: `--data` or data.dataset), only that dataset, and `data.root` when it is an id;
    otherwise the source files (`staged`: ones the command can do without when the dataset was
    staged), the generated synthetic files and the datasets root."""
    if dataset:
        from preprocessing.store.dataset import is_dataset_id

        if not is_dataset_id(dataset):
            return [PathArg("data.dataset", dataset, "input")]
        return [PathArg("data.root", data.root, "input")]
    from preprocessing.store.writer import LOCATION_FIELDS

    out = [PathArg("data.root", data.root, "output")]
    out += [PathArg(f"data.source.{key}", getattr(data.source, key), "staged" if staged else "input")
            for key in LOCATION_FIELDS if getattr(data.source, key)]
    if data.source.kind in ("synthetic", "synthetic_images") and not data.source.data_3d:
        out.append(PathArg("data.source.synthetic.out_dir", data.source.synthetic.out_dir, "output"))
    if data.images.boxes_2d:
        out.append(PathArg("data.images.boxes_2d", data.images.boxes_2d, "input"))
    return out


def add_config_arguments(parser, required: bool = True, sections: tuple[str, ...] = ("data", "train"),
                         staged: bool = True) -> None:
    """The `--config FILE` and repeated `--set KEY=VALUE` options every config-driven command takes.
    `sections`: which of the config's locations the command uses, and `staged`: whether it can run
    on a staged dataset without the source files (`experiment_locations`), for `raylift submit`'s
    check of relative paths."""
    add_location_argument(parser, "--config", role="input", required=required, help="experiment YAML (see configs/)")
    parser.set_defaults(config_locations=functools.partial(experiment_locations, sections=sections, staged=staged))
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value by dotted key, e.g. --set train.epochs=5 (repeatable)",
    )


def experiment_locations(path: str, overrides: list[str], args: Any, sections: tuple[str, ...],
                         staged: bool) -> list[PathArg]:
    """The locations the experiment config at `path` (with `--set` overrides) makes a command use,
    for the config sections it reads (`data`, `train`, `tune`). A `--data` argument names the
    prepared dataset instead of data.dataset."""
    cfg = load_config(path, overrides)
    out = []
    if "data" in sections:
        out += data_locations(cfg.data, getattr(args, "data", None) or cfg.data.dataset, staged)
    if "train" in sections:
        out.append(PathArg("train.storage_path", cfg.train.storage_path, "output"))
    if "tune" in sections and cfg.tune is not None:
        out.append(PathArg("tune.storage_path", cfg.tune.storage_path, "output"))
    if ("train" in sections or "tune" in sections) and cfg.tracking is not None and cfg.tracking.mlflow_uri:
        out.append(PathArg("tracking.mlflow_uri", cfg.tracking.mlflow_uri, "tracking"))
    return out


def parse_resources(text: str) -> dict[str, float]:
    """`GPU=8,CPU=64` -> {"GPU": 8.0, "CPU": 64.0}; anything else is a ConfigError naming it."""
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, amount = item.partition("=")
        try:
            value = float(amount)
        except ValueError:
            value = float("nan")
        if not sep or not name.strip() or not value >= 0:
            raise ConfigError(f"--resources: expected NAME=AMOUNT (AMOUNT >= 0), got {item!r}")
        out[name.strip()] = value
    if not out:
        raise ConfigError(f"--resources: expected NAME=AMOUNT[,NAME=AMOUNT], got {text!r}")
    return out


def user_error_types() -> tuple[type, ...]:
    """Exception types that mean 'the user gave bad input', not 'raylift has a bug'."""
    from models.checkpoint import CheckpointError
    from preprocessing.errors import DataError

    return (ConfigError, DataError, CheckpointError)


def user_error_in(error: BaseException) -> Optional[Exception]:
    """The first raylift user error (`user_error_types`) in `error` or in what it wraps (a Ray
    Train failure's worker failures, a Ray task error's cause, exception causes and contexts), as
    an exception that prints as its own one line; None when there is none (a bug).

    A failure inside a Ray worker, Ray Train worker or Ray Data task reaches the driver wrapped:
    `RayTaskError(DataError)` is a DataError whose text is the task's traceback, and Ray Data
    appends its retry notes to the exception's message on further lines."""
    kinds = user_error_types()
    seen: set[int] = set()
    todo: list[Optional[BaseException]] = [error]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, kinds):
            return _one_line_user_error(e, kinds)
        todo += list((getattr(e, "worker_failures", None) or {}).values())
        todo += [getattr(e, "controller_failure", None), getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


def _one_line_user_error(error: Exception, kinds: tuple[type, ...]) -> Exception:
    """`error` itself when it prints as one line, else an exception of its raylift type with the
    line the error itself said: the first line of its message, or, for a Ray task error whose
    original exception was not kept, the `Kind: message` line its traceback text ends with."""
    cause = getattr(error, "cause", None)  # a RayTaskError(DataError) carries the original
    wrapped = hasattr(error, "cause") and not isinstance(cause, kinds)
    if isinstance(cause, kinds):
        error = cause
    kind = next(k for k in kinds if isinstance(error, k))
    lines = str(error).strip().splitlines() or [""]
    if wrapped:
        said = [ln.split(": ", 1)[1] for ln in lines
                if ": " in ln and ln.split(": ", 1)[0].rsplit(".", 1)[-1] == kind.__name__]
        return kind(said[-1] if said else lines[0])
    return error if len(lines) == 1 else kind(lines[0])
