"""Evaluation as Ray Data batch inference: the model runs where the resources are, not in the driver.

A Ray job's driver runs on the head node, and cluster heads have no GPU (cluster/*.yaml,
cluster/kuberay/). So the test split is streamed through `Dataset.map_batches`:

- with `use_gpu` or custom worker resources (`Placement.accelerated`): a pool of actors, each
  loading the checkpoint once and asking for `gpus` GPUs and the custom `resources` per actor (the
  same per-worker resources training used);
- otherwise: stateless CPU tasks, each loading the checkpoint once per worker process (cached).

Each batch returns its real (non-flipped) windows with a `pred` column (N, T', [V,] J, 3); the
driver gathers the scoring columns and the predictions and scores them with exactly the code of
`pipelines/evaluate/protocols.py` (`evaluate_arrays` with `pred`), so the tables match today's
in-driver evaluation. Row order does not matter: `collect_frames` sorts frames by sequence.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np

from preprocessing.storage import Location

# (checkpoint uri, device) -> (model, meta), per worker process: a CPU task loads the checkpoint once.
_MODELS: dict[tuple[str, str], tuple[Any, dict]] = {}


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


def _load(checkpoint: Union[str, Location], device: str, expect_model: Optional[str],
          expect_frames: Optional[int]) -> tuple[Any, dict]:
    from models.checkpoint import load_model
    from pipelines.train.checkpoints import local_copy

    key = (checkpoint.uri if isinstance(checkpoint, Location) else str(checkpoint), device)
    if key not in _MODELS:
        with local_copy(checkpoint) as d:
            model, meta = load_model(d, expect_model=expect_model, expect_frames=expect_frames)
        _MODELS[key] = (model.to(device), meta)
    return _MODELS[key]


def lift_batch(batch: dict[str, np.ndarray], model: Any, layout: str, flip: bool, batch_size: int,
               device: str, bf16: bool) -> dict[str, np.ndarray]:
    """The batch's real windows (flipped training copies dropped) with their predictions `pred`."""
    from pipelines.evaluate.prediction import predict_windows

    flipped = batch.get("flipped")
    keep = np.ones(len(batch["keypoints_2d"]), bool) if flipped is None else ~np.asarray(flipped, bool)
    out = {k: np.asarray(v)[keep] for k, v in batch.items()}
    kp = out["keypoints_2d"]  # (N, T, [V,] J, 2)
    if len(kp) == 0:
        out["pred"] = np.zeros(out["positions_3d"].shape, np.float32)
        return out
    out["pred"] = predict_windows(model, kp, layout, flip=flip, batch_size=batch_size, device=device, bf16=bf16)
    return out


class _LiftActor:
    """map_batches actor: the model stays loaded on its GPU for every batch it is given."""

    def __init__(self, checkpoint, device, expect_model, expect_frames, layout, flip, batch_size, bf16):
        self.model, _ = _load(checkpoint, device, expect_model, expect_frames)
        self.args = (layout, flip, batch_size, device, bf16)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return lift_batch(batch, self.model, *self.args)


def _lift_task(batch: dict[str, np.ndarray], checkpoint, device, expect_model, expect_frames, layout, flip,
               batch_size, bf16) -> dict[str, np.ndarray]:
    model, _ = _load(checkpoint, device, expect_model, expect_frames)
    return lift_batch(batch, model, layout, flip, batch_size, device, bf16)


def predict_split(checkpoint: Union[str, Location], dataset_uri: str, layout: str, placement: Placement,
                  flip: bool = True, batch_size: int = 64, bf16: bool = False,
                  expect_model: Optional[str] = None, expect_frames: Optional[int] = None,
                  split: str = "test") -> dict[str, np.ndarray]:
    """Every real window of `split` with its prediction, gathered on the driver: the scoring
    columns (`protocols.TEST_COLUMNS`) plus `pred`."""
    from pipelines.evaluate.protocols import TEST_COLUMNS
    from preprocessing.readers import open_split
    from preprocessing.storage import open_location

    loc = checkpoint if isinstance(checkpoint, Location) else open_location(str(checkpoint))
    args = dict(checkpoint=loc, device=placement.device, expect_model=expect_model, expect_frames=expect_frames,
                layout=layout, flip=flip, batch_size=batch_size, bf16=bf16)
    ds = open_split(dataset_uri, split, columns=list(TEST_COLUMNS))
    if placement.accelerated:
        ds = ds.map_batches(_LiftActor, fn_constructor_kwargs=args, batch_size=batch_size, batch_format="numpy",
                            concurrency=placement.actors, num_cpus=placement.cpus, num_gpus=placement.gpus,
                            resources=placement.resources or None)
    else:
        ds = ds.map_batches(_lift_task, fn_kwargs=args, batch_size=batch_size, batch_format="numpy",
                            num_cpus=placement.cpus)
    parts: dict[str, list[np.ndarray]] = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for k, v in batch.items():
            parts.setdefault(k, []).append(np.asarray(v))
    if not parts:
        from preprocessing.errors import DataError

        raise DataError(f"{dataset_uri}: {split} split has no windows")
    return {k: np.concatenate(v) for k, v in parts.items()}


def evaluate_on_ray(checkpoint: Union[str, Location], dataset_uri: str, layout: str, placement: Placement,
                    flip: bool = True, batch_size: int = 64, bf16: bool = False, baseline: bool = True,
                    expect_model: Optional[str] = None, expect_frames: Optional[int] = None,
                    progress: Callable[[str], None] = print, selection: Optional[str] = None) -> dict[str, Any]:
    """`protocols.evaluate_model`'s result for a checkpoint, with the forward passes run by Ray Data
    on `placement`; the mean-pose baseline (numpy) is computed in the driver as before."""
    from pipelines.evaluate.protocols import evaluate_arrays, load_train_for_baseline

    where = (f"{placement.actors} actor(s) with {placement.gpus:g} GPU(s) and {placement.resources or 'no custom'} "
             "resources each" if placement.accelerated else f"CPU tasks of {placement.cpus:g} CPU(s)")
    progress(f"evaluation: Ray Data batch inference on {where}")
    arrays = predict_split(checkpoint, dataset_uri, layout, placement, flip, batch_size, bf16, expect_model,
                           expect_frames)
    pred = arrays.pop("pred")
    train, notes = load_train_for_baseline(dataset_uri) if baseline else (None, [])
    return evaluate_arrays(None, arrays, dataset_uri, layout, flip=flip, batch_size=batch_size, train=train,
                           notes=notes, pred=pred, selection=selection)
