"""`raylift predict2d --checkpoint D --data ID --output FILE.npz`: stage 2's input.

An image-to-2D checkpoint (mpstr) predicts 2D keypoints for every frame of every camera of an
image dataset (train and test splits), maps them from crop pixels back to full-image pixels
through the stored crop boxes, and writes a VideoPose3D-format 2D file:
`positions_2d[subject][action]` = a list over the dataset's cameras (in the source's camera
order) of float32 (N, 17, 2) pixel arrays, and `metadata` = {layout_name, num_joints,
keypoints_symmetry, res (per camera {w, h}), cameras, checkpoint, dataset_id, boxes (the crop
boxes' source per split, `images2d.box_source_text`: predictions made in ground-truth boxes carry
the true person centre and scale)}. The h36m and generic
sources read it as any detector's 2D file, so any lifter trains on it (`raylift two-stage`).

Every frame of a sequence must have a prediction (the image dataset stores each image once, with
padded frames masked); a gap is a DataError naming the sequence, camera and frame, and the file
appears only when complete (written under a temporary name, then renamed).
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipelines.evaluate.batch import add_placement_arguments
from preprocessing.images.crops import to_full
from preprocessing.errors import DataError
from preprocessing.store.dataset import Dataset
from pipelines.config import add_location_argument


def collect_full_image(arrays: dict[str, np.ndarray], size: int, views: int,
                       out: dict[tuple[str, str], dict[int, np.ndarray]]) -> None:
    """Put window predictions (see `images2d.predict_split`) into per-sequence frame tables:
    out[(subject, action)][frame] = (V, J, 2) full-image pixels; padded frames are skipped."""
    full = to_full(arrays["pred"], arrays["boxes"], size)  # (W, f, V, J, 2)
    for i in range(len(full)):
        table = out.setdefault((str(arrays["subject"][i]), str(arrays["action"][i])), {})
        for t in np.flatnonzero(arrays["mask"][i] > 0):
            table[int(arrays["frame"][i, t])] = full[i, t, :views].astype(np.float32)


def positions_2d(tables: dict[tuple[str, str], dict[int, np.ndarray]], cameras: list[str]) -> dict:
    """{subject: {action: [per camera (N, J, 2)]}} from frame tables, every frame 0..N-1 present."""
    out: dict[str, dict[str, list[np.ndarray]]] = {}
    for (subject, action), table in sorted(tables.items()):
        n = max(table) + 1
        missing = next((k for k in range(n) if k not in table), None)
        if missing is not None:
            raise DataError(f"{subject}/{action}: no prediction for frame {missing} (of {n}): the image dataset "
                            "does not hold every frame of this sequence")
        stacked = np.stack([table[k] for k in range(n)])  # (N, V, J, 2)
        out.setdefault(subject, {})[action] = [np.ascontiguousarray(stacked[:, v]) for v in range(len(cameras))]
    return out


def predict_2d_file(checkpoint: str, dataset: Dataset, output: str, placement: Any, batch_size: int = 8,
                    bf16: bool = False, ship: bool = True, progress: Callable[[str], None] = print) -> dict:
    """Predict every frame of every camera of `dataset` with `checkpoint`, the forward passes
    as Ray Data batch inference on `placement` (`images2d.predict_split`; `ship`: see
    `images2d.checkpoint_for_workers`); write `output`. Returns the file's metadata plus `frames`
    (camera-frames written)."""
    from pipelines.evaluate.batch import where_text
    from pipelines.evaluate.images2d import box_source_text, checkpoint_for_workers, predict_split
    from preprocessing.skeleton import get_skeleton
    from preprocessing.sources.safe_npz import write_npz

    manifest, windows = dataset.manifest, dataset.windows
    source, meta = checkpoint_for_workers(checkpoint, dataset, ship)
    boxes = box_source_text(dataset)
    progress(f"predicting 2D: Ray Data batch inference on {where_text(placement)}; crop boxes: {boxes}")
    cameras = list(manifest["cameras"])
    tables: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    for split in [s for s in ("train", "test") if s in manifest["splits"]]:
        arrays = predict_split(source, dataset, split, placement, batch_size, bf16)
        collect_full_image(arrays, int(windows["size"]), len(cameras), tables)
        progress(f"predicted {split}: {int(arrays['mask'].sum()) * len(cameras)} images")
    pos = positions_2d(tables, cameras)
    skel = get_skeleton(dataset.layout)
    sizes = manifest.get("image_sizes") or {}
    metadata = {
        "layout_name": skel.name,
        "num_joints": skel.num_joints,
        "keypoints_symmetry": [list(skel.left), list(skel.right)],
        "res": [{"w": int(sizes[c][0]), "h": int(sizes[c][1])} for c in cameras] if sizes else [],
        "cameras": cameras,
        "checkpoint": str(checkpoint),
        "dataset_id": str(manifest["id"]),
        "boxes": boxes,
    }
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        write_npz(tmp, {"positions_2d": pos, "metadata": metadata})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    frames = sum(len(v[0]) * len(v) for acts in pos.values() for v in acts.values())
    progress(f"wrote {path}: {frames} camera-frames of {len(tables)} sequences x {len(cameras)} cameras")
    return {**metadata, "frames": frames}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_location_argument(parser, "--checkpoint", role="input", required=True, help="an image-to-2D (mpstr) checkpoint directory")
    add_location_argument(parser, "--data", role="dataset", default=None,
                        help="image dataset id under --root, or an experiment YAML whose image data is built "
                             "(default: the checkpoint's dataset)")
    add_location_argument(parser, "--root", role="input", default=None, help="datasets root (default: the checkpoint config's data.root)")
    add_location_argument(parser, "--output", role="output", required=True, help="VideoPose3D-format 2D file to write (.npz)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    add_placement_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pipelines.evaluate.batch import ensure_ray, placement_for_cli
    from pipelines.evaluate.images2d import resolve_image_dataset
    from pipelines.evaluate.batch import parse_placement_resources

    if not args.output.endswith(".npz"):
        raise DataError(f"--output {args.output}: expected a .npz file name")
    ensure_ray()  # before resolve_image_dataset, which may build a YAML's dataset with Ray Data
    dataset = resolve_image_dataset(args.checkpoint, args.data, args.root)
    placement = placement_for_cli(args.device, parse_placement_resources(args.resources), args.actors)
    predict_2d_file(args.checkpoint, dataset, args.output, placement, args.batch_size, args.bf16)
    return 0
