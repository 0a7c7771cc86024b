"""Reading person-crop datasets back: Ray Data for training workers, pyarrow for checks.

- `open_image_split(dataset, split)`: the split's shards as a streaming `ray.data.Dataset` (rows in
  shard order), its rows decoded in Ray Data tasks (`map_batches`) into `images` (f, V, 3, H, W)
  float32 in [0, 1], `keypoints` (f, V, J, 2) crop pixels, `boxes` (f, V, 4), `mask` (f,), `flipped` (); with
  `flip=True` each window is mirrored with probability 1/2 (image and left/right labels), drawn
  from a seed of (`seed`, subject, action, start), so pass the epoch as `seed` for new draws.
  `ds.iter_torch_batches(batch_size=B)` then gives (B, f, V, 3, H, W) tensors on each worker.
- `load_image_split(dataset, split)`: the same arrays (with the label columns of `decode_rows`)
  for a whole split, read shard by shard without Ray, each shard checked against its sha256.
- `iter_image_groups(dataset, split, rank, world)`: decoded row groups, a share per worker, every
  page checked (per-epoch validation).
- `mean_keypoints(dataset, split)`: the mean crop-pixel label of a split, read without the images
  (the 2D evaluation's mean-pose baseline).
A damaged shard raises a DataError naming it (preprocessing/store/parquet.py), a corrupt image one
naming the dataset, shard or sequence, and the frame.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from preprocessing.errors import DataError
from preprocessing.images.crops import decode_image, flip_crops
from preprocessing.images.render import sequence_seed
from preprocessing.skeleton import get_skeleton
from preprocessing.store import parquet
from preprocessing.store.dataset import Dataset

# CPUs each decode task (JPEG crops -> float arrays, in `map_batches`) requests: a decode keeps a
# core busy, but a whole CPU would not fit beside a 1-CPU Train worker and a Tune trial driver's
# sliver on 2 CPUs (pipelines/tune/driver.py's `trial_needs` counts one).
DECODE_TASK_CPUS = 0.5
COLUMNS = ["images", "keypoints", "boxes", "mask", "frame", "subject", "action", "activity", "camera", "start"]


def decode_rows(table, size: int, views: int, flip: bool, seed: int, perm: np.ndarray, where: str,
                labels: bool = False) -> dict[str, np.ndarray]:
    """Decode an Arrow table of window rows (see preprocessing/images/dataset.py) into arrays; with
    `labels`, also `subject`, `action`, `activity`, `camera` (W,) and `frame` (W, f) (evaluation
    and prediction, which map predictions back to sequences and frames)."""
    cols = {k: parquet.column_numpy(table.column(k).combine_chunks()) for k in ("keypoints", "boxes", "mask", "frame")}
    images_col = table.column("images").to_pylist()
    subjects = table.column("subject").to_pylist()
    actions = table.column("action").to_pylist()
    cameras = table.column("camera").to_pylist()
    starts = table.column("start").to_pylist()
    n, f = cols["mask"].shape
    images = np.zeros((n, f, views, 3, size, size), dtype=np.float32)
    keypoints = np.array(cols["keypoints"], dtype=np.float32)
    flipped = np.zeros(n, dtype=bool)
    for i in range(n):
        cams = cameras[i].split(",")
        for t in range(f):
            if cols["mask"][i, t] == 0:
                continue
            for v in range(views):
                frame = int(cols["frame"][i, t])
                data = images_col[i][t * views + v]
                pixels = decode_image(data, size, f"{where}: {subjects[i]}/{actions[i]} camera {cams[v]} frame {frame}")
                images[i, t, v] = pixels.transpose(2, 0, 1) / np.float32(255.0)
        if flip and sequence_seed(seed, subjects[i], actions[i], starts[i], "flip") % 2:  # a fair coin from sha256
            images[i], keypoints[i] = flip_crops(images[i], keypoints[i], size, perm)
            flipped[i] = True
    out = {"images": images, "keypoints": keypoints, "boxes": np.array(cols["boxes"], dtype=np.float32),
           "mask": np.array(cols["mask"], dtype=np.float32), "flipped": flipped}
    if labels:
        out.update(subject=np.asarray(subjects, dtype=object), action=np.asarray(actions, dtype=object),
                   activity=np.asarray(table.column("activity").to_pylist(), dtype=object),
                   camera=np.asarray(cameras, dtype=object), frame=np.asarray(cols["frame"], dtype=np.int32))
    return out


def _image_dataset(dataset: Dataset) -> Dataset:
    if dataset.kind != "images":
        raise DataError(f"dataset {dataset.uri} is a keypoint dataset, not an image dataset (source.kind "
                        f"{dataset.source.get('kind')!r})")
    return dataset


def _decode_args(dataset: Dataset) -> tuple[int, int, np.ndarray]:
    """(crop size, views, left/right permutation) of an image dataset."""
    w = dataset.windows
    return int(w["size"]), int(w["views"]), get_skeleton(dataset.layout).flip_permutation()


def open_image_split(dataset: Dataset, split: str, flip: Optional[bool] = None, seed: int = 0, labels: bool = False):
    """See module doc. `flip` defaults to the dataset's `images.flip` for "train", off otherwise;
    `labels` adds the sequence and frame columns (`decode_rows`)."""
    import ray

    size, views, perm = _decode_args(_image_dataset(dataset))
    flip = (dataset.windows["flip"] and split == "train") if flip is None else flip
    ds = ray.data.read_datasource(parquet.shard_datasource(parquet.split_footers(dataset, split), COLUMNS),
                                  num_cpus=parquet.READ_TASK_CPUS)
    ds = ds.map_batches(decode_rows, fn_args=(size, views, flip, seed, perm, f"dataset {dataset.uri} split {split}"),
                        fn_kwargs={"labels": labels}, batch_format="pyarrow", batch_size=None,
                        num_cpus=DECODE_TASK_CPUS)
    # Rows in shard order whichever task finishes first: a seeded training order is the same on every
    # run, and so is the 2D evaluation's AP (COCO ranks equal scores in the order they come).
    ds.context.execution_options.preserve_order = True
    return ds


def load_image_split(dataset: Dataset, split: str, flip: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """Whole split in memory, rows in shard order (plus `subject`, `action`, `activity`, `frame`)."""
    import pyarrow as pa

    size, views, perm = _decode_args(_image_dataset(dataset))
    parts = []
    for loc, _ in parquet.split_footers(dataset, split):
        try:
            table = parquet.verified_parquet(loc.fs, loc.uri, loc.path, dataset.sha256_of(loc)).read(columns=COLUMNS)
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{loc.uri}: cannot read shard ({e})") from None
        parts.append(decode_rows(table, size, views, flip, seed, perm, loc.uri, labels=True))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def iter_image_groups(dataset: Dataset, split: str, rank: int = 0, world: int = 1, max_windows: Optional[int] = None):
    """Decoded row groups of a split without Ray, worker `rank` of `world` taking row groups rank,
    rank + world, ... (in manifest order), so `world` readers together see every window once.

    Yields `decode_rows` dicts (no flip) plus `subject`, `action`, `activity`, `camera` (object
    arrays) and `frame` (W, f) int32; `max_windows` caps the windows yielded."""
    size, views, perm = _decode_args(_image_dataset(dataset))
    seen = 0
    for loc, index, table in parquet.iter_row_group_share(dataset, split, COLUMNS, rank, world):
        if max_windows is not None and seen >= max_windows:
            return
        if max_windows is not None:
            table = table.slice(0, max_windows - seen)
        seen += table.num_rows
        yield decode_rows(table, size, views, False, 0, perm, f"{loc.uri} row group {index}", labels=True)


def mean_keypoints(dataset: Dataset, split: str) -> np.ndarray:
    """The mean label (J, 2) in crop pixels over every real frame (mask 1) and view of a split's
    windows, float64; only the label columns are read (every page checked). DataError when the
    split has no real frame."""
    total, count = 0.0, 0
    for _, _, table in parquet.iter_row_group_share(_image_dataset(dataset), split, ["keypoints", "mask"]):
        keypoints = parquet.column_numpy(table.column("keypoints").combine_chunks())  # (W, f, V, J, 2)
        real = keypoints[parquet.column_numpy(table.column("mask").combine_chunks()) > 0]  # (frames, V, J, 2)
        total = total + real.astype(np.float64).sum(axis=(0, 1))
        count += real.shape[0] * real.shape[1]
    if not count:
        raise DataError(f"dataset {dataset.uri} split {split}: no real frame to average the labels over")
    return total / count
