"""Ray Data batch inference (evaluation, `infer --dataset`): the model runs where the resources are.

A Ray job's driver runs on the head node, and cluster heads have no GPU (cluster/*.yaml,
cluster/kuberay/). So the test split is streamed through `Dataset.map_batches`:

- with `use_gpu` or custom worker resources (`Placement.accelerated`): a pool of actors, each
  loading the checkpoint once and asking for `gpus` GPUs and the custom `resources` per actor (the
  same per-worker resources training used);
- otherwise: stateless CPU tasks, each loading the checkpoint once per worker process (cached).

Each batch returns its real (non-flipped) windows with a `pred` column (N, T', [V,] J, 3); the
driver gathers the scoring columns and the predictions and scores them with exactly the code of
`pipelines/evaluate/scoring.py` (`evaluate_arrays` with `pred`), so the tables match today's
in-driver evaluation. Row order does not matter: `collect_frames` sorts frames by sequence.

`raylift infer --dataset` lifts one whole sequence the same way (`lift_sequence_on_ray`): the
sequence's keypoints travel once through the object store, each batch of window ids gathers its
windows there, and the driver stitches the predictions back into frames with the window plan.

The model comes from a checkpoint the workers can read (a run directory on shared or object
storage, as after training), or, for a checkpoint only the driver can read (`raylift evaluate
--checkpoint ./local/dir`, `raylift infer --dataset`), from `ship_model`: the driver loads and checks
it on its CPU and puts its meta and weights in the object store.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np

from preprocessing.store.dataset import Dataset
from preprocessing.store.storage import Location

# (checkpoint key, device) -> (model, meta), per worker process: a CPU task loads the checkpoint once.
_MODELS: dict[tuple[str, str], tuple[Any, dict]] = {}
# `--device` of the commands that infer through Ray Data (auto: GPU actors when the cluster has GPUs).
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ShippedCheckpoint:
    """A checkpoint loaded (and so fully checked) in the driver, its meta and weights in Ray's
    object store (`ref` -> (meta, state_dict)), for workers that cannot read the driver's files."""

    source: str  # where the driver read it (for messages and the cache key)
    ref: Any  # ray.ObjectRef of (meta dict, state dict)


def ship_model(model: Any, meta: dict, source: str) -> ShippedCheckpoint:
    """A model the driver loaded (and so checked) from `source`, its meta and weights put in the
    object store for the inference workers."""
    import ray

    return ShippedCheckpoint(str(source), ray.put((meta, model.state_dict())))


@dataclass(frozen=True)
class Placement:
    """Where the forward passes run: `actors` actors with `gpus` GPUs and `resources` each when
    accelerated, else CPU tasks of `cpus` CPUs."""

    gpus: float = 0.0
    cpus: float = 1.0
    resources: dict[str, float] = field(default_factory=dict)
    actors: int = 1

    @property
    def accelerated(self) -> bool:
        return self.gpus > 0 or bool(self.resources)

    @property
    def device(self) -> str:
        return "cuda" if self.gpus > 0 else "cpu"


def placement_for(train: Any) -> Placement:
    """The placement of a `TrainConfig`: one actor per training worker, with its resources."""
    return Placement(
        gpus=train.gpus_per_worker if train.use_gpu else 0.0,
        cpus=train.cpus_per_worker,
        resources=dict(train.resources_per_worker),
        actors=max(1, train.num_workers),
    )


def placement_for_cli(device: str, resources: Optional[dict[str, float]] = None, actors: int = 1) -> Placement:
    """The placement of `--device cpu|cuda|auto` (auto: one GPU per actor when the cluster has
    GPUs now), `--resources` (custom resources per actor) and `--actors`."""
    from preprocessing.errors import DataError

    if device not in DEVICES:
        raise DataError(f"--device: expected one of {', '.join(DEVICES)} for Ray Data inference, got {device!r}")
    if actors < 1:
        raise DataError(f"--actors must be >= 1, got {actors}")
    gpus = 1.0 if device == "cuda" else 0.0
    if device == "auto":
        import ray

        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    return Placement(gpus=gpus, resources=dict(resources or {}), actors=actors)


def add_placement_arguments(parser: argparse.ArgumentParser) -> None:
    """Where Ray Data runs the forward passes (`pipelines.evaluate.batch.placement_for_cli`)."""
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="cuda: actors with one GPU each; cpu: CPU tasks; auto (default): cuda when the "
                             "Ray cluster has GPUs")
    parser.add_argument("--resources", metavar="NAME=N[,NAME=N]", default=None,
                        help="custom Ray resources each inference actor asks for (e.g. accelerator_type:A10G=0.01)")
    parser.add_argument("--actors", type=int, default=1, help="inference actors with --device cuda or --resources")


def parse_placement_resources(text: Optional[str]) -> dict[str, float]:
    """`--resources NAME=N[,NAME=N]` -> {NAME: N} (ConfigError naming a malformed item)."""
    from pipelines.config import parse_resources

    return parse_resources(text) if text else {}


def ensure_ray() -> None:
    """Connect to RAY_ADDRESS's cluster, else start a private local Ray (cluster/session.py)."""
    import ray

    if ray.is_initialized():
        return
    from cluster.session import init_ray

    init_ray()  # quiets the driver's Ray logging once it is up


CheckpointSource = Union[str, Location, ShippedCheckpoint]


def _load(checkpoint: CheckpointSource, device: str, expect_model: Optional[str],
          expect_frames: Optional[int]) -> tuple[Any, dict]:
    from models.checkpoint import load_model

    if isinstance(checkpoint, ShippedCheckpoint):
        key = (f"{checkpoint.source}#{checkpoint.ref.hex()}", device)
    else:
        key = (checkpoint.uri if isinstance(checkpoint, Location) else str(checkpoint), device)
    if key not in _MODELS:
        if isinstance(checkpoint, ShippedCheckpoint):
            import ray

            from models.checkpoint import load_into
            from models.registry import build_model, parse_model_config

            meta, state = ray.get(checkpoint.ref)
            model = build_model(parse_model_config(meta["model"], "meta.model"), frames=int(meta["frames"]),
                                joints=int(meta["joints"]))
            load_into(model, state, checkpoint.source)
            model.eval()
        else:
            from preprocessing.store.storage import local_copy

            with local_copy(checkpoint) as d:
                model, meta = load_model(d, expect_model=expect_model, expect_frames=expect_frames)
        _MODELS[key] = (model.to(device), meta)
    return _MODELS[key]


def lift_batch(batch: dict[str, np.ndarray], model: Any, layout: str, flip: bool, batch_size: int,
               device: str, bf16: bool) -> dict[str, np.ndarray]:
    """The batch's real windows (flipped training copies dropped) with their predictions `pred`."""
    from pipelines.evaluate.prediction import predict_windows
    from pipelines.evaluate.scoring import camera_columns

    flipped = batch.get("flipped")
    keep = np.ones(len(batch["keypoints_2d"]), bool) if flipped is None else ~np.asarray(flipped, bool)
    out = {k: np.asarray(v)[keep] for k, v in batch.items()}
    kp = out["keypoints_2d"]  # (N, T, [V,] J, 2)
    if len(kp) == 0:
        out["pred"] = np.zeros(out["positions_3d"].shape, np.float32)
        return out
    out["pred"] = predict_windows(model, kp, layout, flip=flip, batch_size=batch_size, device=device, bf16=bf16,
                                  columns=camera_columns(out))
    return out


def lift_windows_of_sequence(batch: dict[str, np.ndarray], model: Any, keypoints: Any, plan: Any, layout: str,
                             flip: bool, batch_size: int, device: str, bf16: bool) -> dict[str, np.ndarray]:
    """Predictions (B, T|1, J, 3) of the windows whose ids are `batch["id"]`, gathered from the
    sequence `keypoints` (N, J, 2) (an ObjectRef: fetched once per worker) with `plan`."""
    import ray

    from pipelines.evaluate.prediction import predict_windows

    kp = ray.get(keypoints) if isinstance(keypoints, ray.ObjectRef) else keypoints
    ids = np.asarray(batch["id"], np.int64)
    x = kp[plan.indices(ids)]  # (B, T, J, 2)
    return {"id": ids, "pred": predict_windows(model, x, layout, flip=flip, batch_size=batch_size, device=device,
                                               bf16=bf16)}


class _LiftActor:
    """map_batches actor: the model stays loaded on its GPU for every batch it is given."""

    def __init__(self, checkpoint, device, expect_model, expect_frames, lift, lift_kwargs):
        self.model, _ = _load(checkpoint, device, expect_model, expect_frames)
        self.lift, self.kwargs = lift, {**lift_kwargs, "device": device}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.lift(batch, self.model, **self.kwargs)


def _lift_task(batch: dict[str, np.ndarray], checkpoint, device, expect_model, expect_frames, lift,
               lift_kwargs) -> dict[str, np.ndarray]:
    model, _ = _load(checkpoint, device, expect_model, expect_frames)
    return lift(batch, model, **lift_kwargs, device=device)


def map_lift(ds: Any, checkpoint: CheckpointSource, placement: Placement, batch_size: int, lift: Callable,
              lift_kwargs: dict, expect_model: Optional[str], expect_frames: Optional[int]) -> Any:
    """`ds.map_batches(lift)` on GPU/custom-resource actors or CPU tasks, per `placement`."""
    args = dict(checkpoint=checkpoint, device=placement.device, expect_model=expect_model,
                expect_frames=expect_frames, lift=lift, lift_kwargs=lift_kwargs)
    if placement.accelerated:
        from ray.data import ActorPoolStrategy

        return ds.map_batches(_LiftActor, fn_constructor_kwargs=args, batch_size=batch_size, batch_format="numpy",
                              compute=ActorPoolStrategy(size=placement.actors), num_cpus=placement.cpus,
                              num_gpus=placement.gpus, resources=placement.resources or None)
    return ds.map_batches(_lift_task, fn_kwargs=args, batch_size=batch_size, batch_format="numpy",
                          num_cpus=placement.cpus)


def gather(ds: Any) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for k, v in batch.items():
            parts.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in parts.items()}


def where_text(placement: Placement) -> str:
    """`placement` in words, for the progress line."""
    if placement.accelerated:
        return (f"{placement.actors} actor(s) with {placement.gpus:g} GPU(s) and "
                f"{placement.resources or 'no custom'} resources each")
    return f"CPU tasks of {placement.cpus:g} CPU(s)"


def predict_split(checkpoint: CheckpointSource, dataset: Dataset, placement: Placement,
                  flip: bool = True, batch_size: int = 64, bf16: bool = False,
                  expect_model: Optional[str] = None, expect_frames: Optional[int] = None,
                  split: str = "test") -> dict[str, np.ndarray]:
    """Every real window of `split` with its prediction, gathered on the driver: the scoring
    columns (`scoring.TEST_COLUMNS`) plus `pred`."""
    from pipelines.evaluate.scoring import TEST_COLUMNS
    from preprocessing.keypoints.readers import open_split
    from preprocessing.store.storage import open_location

    if isinstance(checkpoint, str):
        checkpoint = open_location(checkpoint)
    ds = open_split(dataset, split, columns=list(TEST_COLUMNS))
    ds = map_lift(ds, checkpoint, placement, batch_size, lift_batch,
                   dict(layout=dataset.layout, flip=flip, batch_size=batch_size, bf16=bf16), expect_model, expect_frames)
    parts = gather(ds)
    if not parts:
        from preprocessing.errors import DataError

        raise DataError(f"{dataset.uri}: {split} split has no windows")
    return parts


def lift_sequence_on_ray(checkpoint: CheckpointSource, keypoints_2d: np.ndarray, frames: int, mode: str,
                         skeleton: Any, placement: Placement, flip: bool = True, batch_size: int = 64,
                         bf16: bool = False) -> np.ndarray:
    """`pipelines.evaluate.infer.lift_sequence` with the forward passes run by Ray Data on
    `placement`: (N, J, 2) normalised keypoints -> (N, J, 3) root-relative metres, each frame
    predicted once from the same windows."""
    import ray

    from pipelines.evaluate.windows import plan_windows, stitch_into
    from preprocessing.errors import DataError

    kp = np.asarray(keypoints_2d, dtype=np.float32)
    if kp.ndim != 3 or kp.shape[-1] != 2:
        raise DataError(f"keypoints must be (frames, joints, 2), got {kp.shape}")
    plan = plan_windows(kp.shape[0], frames, mode)
    ds = ray.data.range(plan.num_windows)  # one row per window id
    ds = map_lift(ds, checkpoint, placement, batch_size, lift_windows_of_sequence,
                   dict(keypoints=ray.put(kp), plan=plan, layout=skeleton.name, flip=flip, batch_size=batch_size,
                        bf16=bf16), None, frames)
    got = gather(ds)
    out = np.zeros(kp.shape[:2] + (3,), dtype=np.float32)  # (N, J, 3)
    stitch_into(out, got["pred"], plan, got["id"])
    return out - out[:, skeleton.root : skeleton.root + 1]


def evaluate_on_ray(checkpoint: CheckpointSource, dataset: Dataset, placement: Placement,
                    flip: bool = True, batch_size: int = 64, bf16: bool = False, baseline: bool = True,
                    expect_model: Optional[str] = None, expect_frames: Optional[int] = None,
                    progress: Callable[[str], None] = print, labels: Optional[dict[str, str]] = None,
                    camera_inputs: tuple[str, ...] = ()) -> dict[str, Any]:
    """`protocols.evaluate_model`'s result for a checkpoint, with the forward passes run by Ray Data
    on `placement`; the mean-pose baseline (numpy) is computed in the driver as before."""
    from pipelines.evaluate.scoring import evaluate_arrays, load_train_for_baseline

    progress(f"evaluation: Ray Data batch inference on {where_text(placement)}")
    arrays = predict_split(checkpoint, dataset, placement, flip, batch_size, bf16, expect_model,
                           expect_frames)
    pred = arrays.pop("pred")
    train, notes = load_train_for_baseline(dataset) if baseline else (None, [])
    return evaluate_arrays(None, arrays, dataset.uri, dataset.layout, flip=flip, batch_size=batch_size, train=train,
                           notes=notes, pred=pred, labels=labels, camera_inputs=camera_inputs)
