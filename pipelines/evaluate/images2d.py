"""Scoring an image-to-2D checkpoint (mpstr) on an image dataset: `raylift evaluate` on such a
checkpoint, and the evaluation after `raylift train`.

Protocol (printed with every table, `protocol_2d`): every real image of the test split once
(padded frames, mask 0, left out), no test-time flip; predictions in crop pixels are mapped to
full-image pixels through the stored crop boxes, whose source the results name per split
(`box_source_text`: ground-truth boxes, or a detector's 2D file on the test split); metrics from
`pipelines/evaluate/metrics2d.py`: PCK@0.05 of the ground-truth person box's longer side
(whatever the crop box, so results are comparable across box sources; the authors'
utils/valid.py), mean pixel error and MSE, OKS AP/AP50/AP75/AR through pycocotools with COCO's
sigmas mapped to the H36M-17 joints; per activity and overall (image-wise). Every table has a
reference row, `MEAN_POSE`: the training split's mean label in crop pixels placed in every test
crop, scored the same way (what knowing only the crop box is worth). The overall comparison
(the paper's Table I) lists it and every model; with a second checkpoint (`--compare`), the
no-relations baseline next to the full model, on the same images.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from models.checkpoint import CheckpointError
from pipelines.evaluate.metrics2d import PCK_THRESHOLD, evaluate_2d
from pipelines.viz.tables import render_table
from preprocessing.store.dataset import Dataset

MEAN_POSE = "mean pose (training mean in the crop box)"
COLUMNS_2D = (("PCK@0.05", "PCK@0.05 %", 100.0), ("pixel_error", "px err", 1.0), ("MSE", "MSE px^2", 1.0),
              ("AP", "AP", 100.0), ("AP50", "AP50", 100.0), ("AP75", "AP75", 100.0), ("AR", "AR", 100.0))


def protocol_2d(boxes: str) -> str:
    """The protocol line printed with every 2D table; `boxes`: `box_source_text`."""
    return (f"2D: every real test image once (padded frames excluded), no test-time flip, full-image pixels "
            f"via the crop boxes ({boxes}); PCK@{PCK_THRESHOLD:g} = joint error < {PCK_THRESHOLD:g} x the longer "
            "side of the ground-truth person box (the GT keypoints' tight box, whatever the crop box; authors' "
            "utils/valid.py); OKS AP/AR by pycocotools with COCO sigmas mapped to H36M-17 "
            f"(metrics2d.H36M_OKS_SIGMAS); {MEAN_POSE}: the training split's mean label in crop pixels placed "
            "in every test crop, scored the same way")


def box_source_text(dataset: Dataset) -> str:
    """Which boxes the dataset's crops were cut in, per split (the manifest's `windows.boxes`;
    datasets built before box files existed have ground-truth boxes): "ground-truth 2D boxes
    (+margin m)", or "boxes from <file> (sha256 ..., +margin m) on test; ground-truth 2D boxes
    (+margin m) on train"."""
    margin = float(dataset.windows.get("margin", 0.0))
    gt = f"ground-truth 2D boxes (+margin {margin:g})"
    boxes = dataset.windows.get("boxes", "gt")
    if boxes == "gt":
        return gt
    others = [split for split in dataset.splits if split not in boxes["splits"]]
    text = f"boxes from {boxes['file']} (sha256 {boxes['sha256'][:12]}..., +margin {margin:g}) on {', '.join(boxes['splits'])}"
    return text + (f"; {gt} on {', '.join(others)}" if others else "")


def load_image_model(checkpoint: str, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The model of an image checkpoint (local directory or URI), in eval mode on `device`."""
    from models.checkpoint import load_model
    from preprocessing.store.storage import local_copy

    with local_copy(checkpoint) as d:
        model, meta = load_model(d)
    _require_image_model(meta, checkpoint)
    return model.to(device).eval(), meta


def _require_image_model(meta: dict, checkpoint: Any) -> None:
    """CheckpointError unless the checkpoint's model takes images."""
    from models.registry import model_class
    from models.registry import is_image_model

    if not is_image_model(model_class(meta["model"]["name"])):
        raise CheckpointError(f"{checkpoint}: model {meta['model']['name']!r} takes 2D keypoints, not images; "
                              "this evaluation is for image models (mpstr)")


def predict_image_batch(batch: dict[str, np.ndarray], model: torch.nn.Module, bf16: bool,
                        device: str) -> dict[str, np.ndarray]:
    """map_batches function (`batch._map_lift`): the batch's windows without their pixels, plus
    `pred` (N, f, V, J, 2) in crop pixels."""
    from pipelines.evaluate.prediction import autocast

    dev = torch.device(device)
    with torch.no_grad(), autocast(dev, bf16):
        pred = model(torch.from_numpy(np.ascontiguousarray(batch["images"])).to(dev))
    out = {k: v for k, v in batch.items() if k not in ("images", "flipped")}
    out["pred"] = pred.float().cpu().numpy()
    return out


def predict_split(checkpoint: Any, dataset: Dataset, split: str, placement: Any, batch_size: int,
                  bf16: bool = False) -> dict[str, np.ndarray]:
    """Predictions for every window of a split, run by Ray Data where `placement` says (GPU or
    custom-resource actors, else CPU tasks; `pipelines/evaluate/batch.py`), never in this driver:
    `pred` and `keypoints` (W, f, V, J, 2) crop pixels, `boxes` (W, f, V, 4), `mask` (W, f),
    `frame` (W, f), `subject`/`action`/`activity`/`camera` (W,). `checkpoint`: a Location the
    workers can read, or a `batch.ShippedCheckpoint`."""
    from pipelines.evaluate.batch import gather, map_lift
    from preprocessing.errors import DataError
    from preprocessing.images.readers import open_image_split

    ds = open_image_split(dataset, split, flip=False, labels=True)
    ds = map_lift(ds, checkpoint, placement, batch_size, predict_image_batch,
                   {"bf16": bf16}, None, None)  # autocast is a no-op off CUDA (prediction.autocast)
    parts = gather(ds)
    if not parts:
        raise DataError(f"{dataset.uri}: {split} split has no windows")
    return parts


def checkpoint_for_workers(checkpoint: Any, dataset: Dataset, ship: bool) -> tuple[Any, dict]:
    """(source for `predict_split`, meta) of an image checkpoint, checked against the dataset's
    window length. `ship`: load it here (on CPU: a damaged file fails here, naming it) and put its
    weights in the object store, for a checkpoint only this process can read (a local directory);
    else the workers read it from its URI (a run directory on shared or object storage)."""
    from pipelines.evaluate.batch import ship_model
    from preprocessing.store import storage

    if ship:
        model, meta = load_image_model(checkpoint, torch.device("cpu"))
        source = ship_model(model, meta, str(checkpoint))
    else:
        source = storage.as_location(checkpoint)
        meta = json.loads(storage.read_bytes(source.child("meta.json")))  # the meta only, not the weights
        _require_image_model(meta, source.uri)
    if int(meta["frames"]) != int(dataset.windows["frames"]):
        raise CheckpointError(f"{checkpoint}: trained on windows of f={meta['frames']} frames, dataset {dataset.uri} "
                              f"has f={dataset.windows['frames']}")
    return source, meta


def score_predictions(arrays: dict[str, np.ndarray], size: int) -> dict[str, dict[str, float]]:
    """Per-activity and overall 2D metrics of `predict_split`'s output."""
    return evaluate_2d(arrays["pred"], arrays["keypoints"], arrays["boxes"], size, arrays["mask"], arrays["activity"])


def score_mean_pose(arrays: dict[str, np.ndarray], mean: np.ndarray, size: int) -> dict[str, dict[str, float]]:
    """`score_predictions` of the `MEAN_POSE` baseline: `mean` (J, 2) crop pixels predicted in every
    crop of `arrays` (a split's windows), mapped back through each crop's own box."""
    return score_predictions({**arrays, "pred": np.broadcast_to(mean, arrays["keypoints"].shape)}, size)


def format_table_2d(results: dict[str, dict[str, float]], markdown: bool = False,
                    mean_pose: Optional[dict[str, float]] = None) -> str:
    """One row per activity, then `overall`: PCK (%), px error, MSE, AP/AP50/AP75/AR (%), images;
    then, given its overall metrics, the `MEAN_POSE` reference row."""
    head = ["activity", *[label for _, label, _ in COLUMNS_2D], "images"]
    named = [(name, results[name]) for name in [*sorted(k for k in results if k != "overall"), "overall"]]
    rows = [[name, *[f"{m[k] * scale:.2f}" for k, _, scale in COLUMNS_2D], str(m["images"])]
            for name, m in named + ([(MEAN_POSE, mean_pose)] if mean_pose else [])]
    return render_table(head, rows, markdown)


def format_table_i(overall: dict[str, dict[str, float]], markdown: bool = False) -> str:
    """The paper's Table I layout: one row per model (e.g. baseline, full), overall 2D metrics."""
    head = ["model", *[label for _, label, _ in COLUMNS_2D]]
    rows = [[name, *[f"{m[k] * scale:.2f}" for k, _, scale in COLUMNS_2D]] for name, m in overall.items()]
    return render_table(head, rows, markdown)


def model_label(meta: dict) -> str:
    """e.g. "mpstr paper full (relations depth 4), f=8": the model, its relations and frames."""
    m = meta["model"]
    if m.get("baseline"):
        what = "baseline (no relations)"
    elif m.get("masked_relations"):
        what = f"masked relations (depth {m.get('relation_depth')}, each image attends only to itself)"
    else:
        what = f"full (relations depth {m.get('relation_depth')})"
    return f"{m.get('name')} {m.get('variant', '')} {what}, f={meta.get('frames')}".replace("  ", " ")


def evaluate_image_checkpoint(checkpoint: str, dataset: Dataset, placement: Any, compare: Optional[str] = None,
                              batch_size: int = 8, bf16: bool = False, ship: bool = True,
                              progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Score `checkpoint` (and `compare`, e.g. the no-relations baseline) on the test split of
    the image dataset `dataset`, the forward passes as Ray Data batch inference on
    `placement`. `ship`: see `checkpoint_for_workers`. Returns {"protocol", "boxes" (the crop
    boxes' source, `box_source_text`), "dataset", "models": {label: {"checkpoint", "epoch",
    "results": per-activity metrics}}, "mean_pose": {"label", "results"} (None for a dataset
    without a training split)}."""
    from pipelines.evaluate.batch import where_text
    from preprocessing.images.readers import mean_keypoints

    size = int(dataset.windows["size"])
    boxes = box_source_text(dataset)
    progress(f"2D evaluation: Ray Data batch inference on {where_text(placement)}; crop boxes: {boxes}")
    models: dict[str, Any] = {}
    for ckpt in [c for c in (compare, checkpoint) if c]:
        source, meta = checkpoint_for_workers(ckpt, dataset, ship)
        label = model_label(meta)
        if label in models:
            label = f"{label} ({Path(str(ckpt)).name})"
        arrays = predict_split(source, dataset, "test", placement, batch_size, bf16)
        models[label] = {"checkpoint": str(ckpt), "epoch": meta.get("epoch"), "results": score_predictions(arrays, size)}
    mean_pose = None
    if dataset.windows_in("train"):
        mean_pose = {"label": MEAN_POSE, "results": score_mean_pose(arrays, mean_keypoints(dataset, "train"), size)}
    return {"protocol": protocol_2d(boxes), "boxes": boxes, "dataset": dataset.uri, "models": models,
            "mean_pose": mean_pose}


def result_text(result: dict[str, Any], markdown: bool = False) -> str:
    """The crop boxes' source, every model's per-activity table (with the mean-pose row), then
    the overall comparison (Table I): the mean pose and every model."""
    head = "## " if markdown else ""
    mean_pose = result["mean_pose"]
    reference = mean_pose["results"]["overall"] if mean_pose else None
    out = [f"crop boxes: {result['boxes']}", ""]
    for label, entry in result["models"].items():
        out += [f"{head}{label} (epoch {entry['epoch']}, {entry['checkpoint']})", "",
                format_table_2d(entry["results"], markdown, reference), ""]
    overall = {**({MEAN_POSE: reference} if reference else {}),
               **{k: v["results"]["overall"] for k, v in result["models"].items()}}
    out += [f"{head}Table I (the paper's comparison): overall", "", format_table_i(overall, markdown), ""]
    if not mean_pose:
        out += [f"no {MEAN_POSE} row: the dataset has no training split", ""]
    out.append(f"protocol: {result['protocol']}")
    return "\n".join(out)


def write_result(result: dict[str, Any], out_dir) -> None:
    """results.json and results.md into `out_dir` (a local path or storage Location), atomically."""
    from preprocessing.store import storage

    loc = storage.as_location(out_dir if isinstance(out_dir, storage.Location) else str(out_dir))
    storage.write_bytes(loc.child("results.json"), (json.dumps(result, indent=1, default=float) + "\n").encode())
    storage.write_bytes(loc.child("results.md"), ("# raylift 2D evaluation\n\n" + result_text(result, True) + "\n").encode())


def evaluate_image_best(cfg, checkpoint_uri: str, dataset: Dataset, run_uri: str,
                        progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The evaluation after `raylift train` of an image model: printed and written to
    `<run>/eval/results.{md,json}`. The forward passes run as Ray Data batch inference on the
    training workers' resources (`batch.placement_for`), never in this driver (on a cluster it runs
    on a head without a GPU); the workers read the checkpoint from the run's storage."""
    from pipelines.evaluate.batch import placement_for
    from preprocessing.store import storage

    result = evaluate_image_checkpoint(checkpoint_uri, dataset, placement_for(cfg.train),
                                       batch_size=cfg.eval.batch_size, bf16=cfg.eval.bf16, ship=False,
                                       progress=progress)
    progress(result_text(result))
    eval_dir = storage.open_location(run_uri).child("eval")
    write_result(result, eval_dir)
    progress(f"results: {eval_dir.uri}/results.md")
    return result


def resolve_image_dataset(checkpoint: str, data: Optional[str], root: Optional[str], progress=print) -> Dataset:
    """The dataset of an image checkpoint: an experiment YAML (its image data is built or found),
    a dataset id under `root`, or by default the checkpoint's dataset under its config's data.root."""
    from models.checkpoint import read_meta
    from preprocessing.store.storage import local_copy
    from preprocessing.store import storage

    if data is not None and (data.endswith((".yaml", ".yml")) or Path(data).is_file()):
        from pipelines.config import load_config
        from preprocessing.images.dataset import build_image_dataset

        cfg = load_config(data)
        if root:
            cfg.data.root = root
        return build_image_dataset(cfg.data, progress=progress)
    with local_copy(checkpoint) as d:
        meta = read_meta(d)
    cfg_root = ((meta.get("config") or {}).get("data") or {}).get("root") or "data/datasets"
    dataset_id = data or meta.get("dataset_id")
    if not dataset_id:
        raise CheckpointError(f"{checkpoint}: meta has no dataset_id: pass --data (a dataset id or experiment YAML)")
    return Dataset.open(storage.join(root or cfg_root, dataset_id))


def is_image_checkpoint(checkpoint: str) -> bool:
    """True when `checkpoint`'s model takes images (read from its meta.json only)."""
    from models.checkpoint import read_meta
    from models.registry import is_image_model, model_class
    from preprocessing.store.storage import local_copy

    with local_copy(checkpoint) as d:
        name = read_meta(d)["model"].get("name")
    try:
        return is_image_model(model_class(name))
    except ValueError:
        return False


def run_cli(args) -> int:
    """`raylift evaluate --checkpoint D [--compare D2] [--data ID|C]` for image checkpoints."""
    from pipelines.evaluate.batch import ensure_ray, parse_placement_resources, placement_for_cli

    ensure_ray()  # before resolve_image_dataset, which may build a YAML's dataset with Ray Data
    dataset = resolve_image_dataset(args.checkpoint, args.data, args.root)
    placement = placement_for_cli(args.device, parse_placement_resources(args.resources), args.actors)
    result = evaluate_image_checkpoint(args.checkpoint, dataset, placement, compare=args.compare,
                                       batch_size=args.batch_size, bf16=args.bf16)
    out = args.out or f"{str(args.checkpoint).rstrip('/')}-eval"
    print(result_text(result))
    write_result(result, out)
    print(f"wrote {out}/results.md and {out}/results.json")
    return 0
