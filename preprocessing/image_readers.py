"""Reading person-crop datasets back: Ray Data for training workers, pyarrow for checks.

- `open_image_split(uri, split)`: the split's shards as a streaming `ray.data.Dataset`, its rows
  decoded in Ray Data tasks (`map_batches`) into `images` (f, V, 3, H, W) float32 in [0, 1],
  `keypoints` (f, V, J, 2) crop pixels, `boxes` (f, V, 4), `mask` (f,), `flipped` (); with
  `flip=True` each window is mirrored with probability 1/2 (image and left/right labels), drawn
  from a seed of (`seed`, subject, action, start), so pass the epoch as `seed` for new draws.
  `ds.iter_torch_batches(batch_size=B)` then gives (B, f, V, 3, H, W) tensors on each worker.
- `load_image_split(uri, split)`: the same arrays (with the label columns of `decode_rows`) for a
  whole split, read shard by shard without Ray (tests).
A corrupt image raises a DataError naming the dataset, shard or sequence, and the frame.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from preprocessing.crops import decode_image, flip_crops
from preprocessing.errors import DataError
from preprocessing.render import sequence_seed
from preprocessing.skeleton import get_skeleton

COLUMNS = ["images", "keypoints", "boxes", "mask", "frame", "subject", "action", "activity", "camera", "start"]


def decode_rows(table, size: int, views: int, flip: bool, seed: int, perm: np.ndarray, where: str,
                labels: bool = False) -> dict[str, np.ndarray]:
    """Decode an Arrow table of window rows (see preprocessing/image_shards.py) into arrays; with
    `labels`, also `subject`, `action`, `activity`, `camera` (W,) and `frame` (W, f) (evaluation
    and prediction, which map predictions back to sequences and frames)."""
    from preprocessing.readers import _column_numpy

    cols = {k: _column_numpy(table.column(k).combine_chunks()) for k in ("keypoints", "boxes", "mask", "frame")}
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


def _image_manifest(uri: str) -> dict:
    from preprocessing.readers import read_manifest

    manifest = read_manifest(uri)
    if manifest.get("kind") != "images":
        raise DataError(f"dataset {uri} is a keypoint dataset, not an image dataset (source.kind "
                        f"{manifest.get('source', {}).get('kind')!r})")
    return manifest


def open_image_split(uri: str, split: str, flip: Optional[bool] = None, seed: int = 0, labels: bool = False):
    """See module doc. `flip` defaults to the dataset's `images.flip` for "train", off otherwise;
    `labels` adds the sequence and frame columns (`decode_rows`)."""
    import ray

    from preprocessing.readers import _shard_datasource, _split_footers

    manifest = _image_manifest(uri)
    w = manifest["windows"]
    flip = (w["flip"] and split == "train") if flip is None else flip
    ds = ray.data.read_datasource(_shard_datasource(_split_footers(uri, split), COLUMNS))  # every page checked
    perm = get_skeleton(manifest["source"]["layout"]).flip_permutation()
    return ds.map_batches(decode_rows, fn_args=(w["size"], w["views"], flip, seed, perm, f"dataset {uri} split {split}"),
                          fn_kwargs={"labels": labels}, batch_format="pyarrow", batch_size=None)


def load_image_split(uri: str, split: str, flip: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """Whole split in memory, rows in shard order (plus `subject`, `action`, `activity`, `frame`)."""
    import pyarrow as pa

    from preprocessing.readers import _parquet_file, check_shards

    manifest = _image_manifest(uri)
    w = manifest["windows"]
    perm = get_skeleton(manifest["source"]["layout"]).flip_permutation()
    parts = []
    for loc in check_shards(uri, split):
        try:
            table = _parquet_file(loc).read(columns=COLUMNS)
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{loc.uri}: cannot read shard ({e})") from None
        parts.append(decode_rows(table, w["size"], w["views"], flip, seed, perm, loc.uri, labels=True))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}



def iter_image_groups(uri, split: str, rank: int = 0, world: int = 1, max_windows: Optional[int] = None):
    """Decoded row groups of a split without Ray, worker `rank` of `world` taking row groups rank,
    rank + world, ... (in manifest order), so `world` readers together see every window once.

    `uri` is a URI or a storage Location. Yields `decode_rows` dicts (no flip) plus `subject`,
    `action`, `activity`, `camera` (object arrays) and `frame` (W, f) int32; `max_windows` caps
    the windows yielded."""
    import pyarrow as pa

    from preprocessing import storage
    from preprocessing.readers import _parquet_file

    loc_ = uri if isinstance(uri, storage.Location) else storage.open_location(uri)
    manifest = _image_manifest(loc_.uri)
    w = manifest["windows"]
    perm = get_skeleton(manifest["source"]["layout"]).flip_permutation()
    shards = [loc_.child(s["path"]) for s in manifest["shards"] if s["split"] == split]
    if not shards:
        raise DataError(f"dataset {loc_.uri} has no {split!r} split")
    groups = []
    for loc in shards:
        try:
            groups += [(loc, i) for i in range(_parquet_file(loc).num_row_groups)]
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{loc.uri}: not a readable Parquet shard ({e})") from None
    seen = 0
    for loc, index in groups[rank::world]:
        if max_windows is not None and seen >= max_windows:
            return
        try:
            table = _parquet_file(loc).read_row_group(index, columns=COLUMNS)
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{loc.uri}: cannot read row group {index} ({e})") from None
        if max_windows is not None:
            table = table.slice(0, max_windows - seen)
        seen += table.num_rows
        yield decode_rows(table, w["size"], w["views"], False, 0, perm, f"{loc.uri} row group {index}", labels=True)
