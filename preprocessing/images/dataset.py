"""Person-crop datasets: image sources -> Parquet shards of encoded crops, with Ray Data.

One row = one window of f consecutive frames x V synchronised views of one (subject, action),
cut without overlap from frame 0 (the last window of a sequence is padded: `mask` 0, empty image
bytes), so every image is stored exactly once. Columns:
- `images`: list<binary>, f*V JPEG/PNG crops (frame-major: index t*V + v; b"" where mask = 0);
- `keypoints` (f, V, J, 2) float32: labels in crop pixels;
- `boxes` (f, V, 4) float32: crop boxes (x0, y0, x1, y1) in full-image pixels of the decoded
  frame (`preprocessing.images.crops.to_full` maps predictions back), cut around the labels or,
  `images.boxes: file`, a detector's 2D (`crop_box`; the manifest's `windows.boxes` says which);
- `mask` (f,) float32; `frame` (f,) int32 (source frame index); `subject`, `action`, `activity`,
  `camera` (view ids joined by ","), `start`, `sequence_length`.
The id, lease, owned staging directory and manifest-last publishing, Ray Data shard tasks and byte
reproducibility are those of every dataset (preprocessing/store/writer.py; this module gives it
the row layout, `ImageRows`): at most one run writes an id at a time, the same inputs give
byte-identical shards, and a run that fails (a corrupt video, a box outside the image) leaves no
dataset behind. Decoding and cropping happen in the shard tasks.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from preprocessing.config import IMAGE_KINDS, DataConfig, ImagesConfig
from preprocessing.errors import DataError
from preprocessing.images.crops import check_box, crop_image, encode_image, keypoint_box, to_crop
from preprocessing.images.render import PixelGrid, render_frame, sequence_seed
from preprocessing.images.sources import ImageSequence, background_of, frames_of, load_image_sequences
from preprocessing.store import storage
from preprocessing.store.dataset import Dataset
from preprocessing.store.manifest import FORMAT_VERSION, has_manifest, read_manifest_at
from preprocessing.store.writer import (
    SPLITS,
    Progress,
    ShardPlan,
    check_root,
    content_config,
    content_id,
    hash_files,
    plan_shards,
    publish_dataset,
    run_shard_tasks,
    staging_location,
)

IMAGE_FORMAT = "images-2"  # bump when the image row layout changes (part of every image dataset id); 2: page checksums
STRING_COLUMNS = ("subject", "action", "activity", "camera")
TENSOR_COLUMNS = ("keypoints", "boxes", "mask", "frame")


@dataclass(frozen=True)
class ImageJob:
    """What a shard task needs besides the sequences."""

    kind: str
    images: ImagesConfig
    seed: int  # synthetic backgrounds and noise

    def windows_of(self, seq: ImageSequence) -> int:
        return -(-seq.num_frames // self.images.frames)


def image_config_for_id(data: DataConfig) -> dict:
    from preprocessing.schema import to_dict

    cfg = content_config(data)
    cfg.pop("windows", None)  # image windows are described by `images`
    cfg["images"] = to_dict(data.images)
    if not data.images.occluder_prob:  # datasets built before occluders existed keep their ids
        cfg["images"].pop("occluder_prob")
        cfg["images"].pop("occluder_size")
    cfg["images"].pop("boxes_2d")  # a location: the boxes file's content is among the hashed files
    if data.images.boxes == "gt":  # datasets built before box files existed keep their ids
        cfg["images"].pop("boxes")
        cfg["images"].pop("boxes_splits")
    cfg["image_format"] = IMAGE_FORMAT
    return cfg


def image_dataset_id(data: DataConfig, file_hashes: list[str]) -> str:
    return content_id(image_config_for_id(data), file_hashes)


def boxes_record(data: DataConfig, boxes_file: str, files: list[dict]) -> Any:
    """The manifest's `windows.boxes`: "gt", or {file (name), sha256, splits} of the 2D file the
    boxes of `images.boxes_splits` were cut around (`files`: the hashed inputs, it among them)."""
    if not boxes_file:
        return "gt"
    from preprocessing.store.storage import open_location

    uri = open_location(boxes_file).uri
    sha = next(f["sha256"] for f in files if f["path"] == uri)
    return {"file": Path(boxes_file).name, "sha256": sha, "splits": list(data.images.boxes_splits)}


# ----------------------------------------------------------------------------- one window's crops


def crop_box(seq: ImageSequence, view: int, k: int, sx: float, sy: float, margin: float) -> np.ndarray:
    """The crop box of frame k of a view, in pixels of the decoded frame (label pixels x (sx,
    sy)): around the labels, or (`images.boxes: file`) around the 2D file's finite points."""
    points = seq.keypoints[k, view] if seq.boxes_2d is None else seq.boxes_2d[k, view]
    return keypoint_box(points[np.isfinite(points).all(axis=-1)] * [sx, sy], margin)


def crop_views(seq: ImageSequence, view: int, start: int, stop: int, job: ImageJob) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """Crops of frames [start, stop) of one view: (encoded images, keypoints (n, J, 2) in crop
    pixels, boxes (n, 4) in full-image pixels of the decoded frame)."""
    cfg = job.images
    size = cfg.size
    encoded, keypoints, boxes = [], [], []
    if seq.joints_cam is not None:  # synthetic: render each crop directly at crop resolution
        background = background_of(seq, view, job.seed)
        for k in range(start, stop):
            kp = seq.keypoints[k, view]
            box = crop_box(seq, view, k, 1.0, 1.0, cfg.margin)
            check_box(box, *seq.image_sizes[view], f"{seq.name(view)} frame {k}")
            grid = PixelGrid(box[0], box[1], size / (box[2] - box[0]), size, size)
            image = render_frame(seq.joints_cam[k, view], seq.intrinsics[view], grid, background, k,
                                 cfg.blur_px, cfg.noise_std, seed=sequence_seed(job.seed, seq.subject, seq.action, seq.cameras[view]),
                                 occluder_prob=cfg.occluder_prob, occluder_size=cfg.occluder_size)
            encoded.append(encode_image(image, cfg.format, cfg.quality))
            keypoints.append(to_crop(kp, box, size))
            boxes.append(box)
    else:
        label_w, label_h = seq.image_sizes[view]
        for k, frame in enumerate(frames_of(seq, view, start, stop), start=start):
            height, width = frame.shape[:2]
            kp = seq.keypoints[k, view] * [width / label_w, height / label_h]  # labels -> decoded pixels
            box = crop_box(seq, view, k, width / label_w, height / label_h, cfg.margin)
            check_box(box, width, height, f"{seq.files[view]} frame {k}")
            encoded.append(encode_image(crop_image(frame, box, size), cfg.format, cfg.quality))
            keypoints.append(to_crop(kp, box, size))
            boxes.append(box)
    return encoded, np.asarray(keypoints).reshape(-1, seq.keypoints.shape[2], 2), np.asarray(boxes).reshape(-1, 4)


def piece_rows(seq: ImageSequence, lo: int, hi: int, job: ImageJob) -> dict[str, np.ndarray]:
    """Windows [lo, hi) of a sequence as column arrays (see module doc)."""
    f, views = job.images.frames, len(seq.cameras)
    first, stop = lo * f, min(hi * f, seq.num_frames)
    real = stop - first
    per_view = [crop_views(seq, v, first, stop, job) for v in range(views)]
    n_win = hi - lo
    total = n_win * f
    pad = np.minimum(np.arange(total), real - 1)  # padded frames repeat the last real labels
    keypoints = np.stack([kp[pad] for _, kp, _ in per_view], axis=1)  # (n_win*f, V, J, 2)
    boxes = np.stack([bx[pad] for _, _, bx in per_view], axis=1)  # (n_win*f, V, 4)
    mask = (np.arange(total) < real).astype(np.float32)
    images = []
    for w in range(n_win):
        row = []
        for t in range(w * f, (w + 1) * f):
            row.extend(per_view[v][0][t] if t < real else b"" for v in range(views))
        images.append(row)
    out = {
        "images": images,
        "keypoints": keypoints.reshape(n_win, f, views, -1, 2).astype(np.float32),
        "boxes": boxes.reshape(n_win, f, views, 4).astype(np.float32),
        "mask": mask.reshape(n_win, f),
        "frame": (first + pad).reshape(n_win, f).astype(np.int32),
        "start": (np.arange(lo, hi) * f).astype(np.int32),
        "sequence_length": np.full(n_win, seq.num_frames, dtype=np.int32),
    }
    for key, value in (("subject", seq.subject), ("action", seq.action), ("activity", seq.activity),
                       ("camera", ",".join(seq.cameras))):
        out[key] = [value] * n_win
    return out


def rows_table(parts: list[dict]):
    import pyarrow as pa

    cat = {k: (np.concatenate([p[k] for p in parts]) if isinstance(parts[0][k], np.ndarray) else sum((p[k] for p in parts), []))
           for k in parts[0]}
    columns = {"images": pa.array(cat["images"], type=pa.list_(pa.binary()))}
    for key in TENSOR_COLUMNS:
        columns[key] = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(cat[key]))
    for key in STRING_COLUMNS:
        columns[key] = pa.array(cat[key], type=pa.string())
    columns["start"] = pa.array(cat["start"], type=pa.int32())
    columns["sequence_length"] = pa.array(cat["sequence_length"], type=pa.int32())
    return pa.table(columns)


def parquet_options() -> dict:
    """zstd for labels and metadata; the already-compressed image bytes are stored as they are."""
    return {
        "compression": {"images.list.element": "NONE", **{c: "ZSTD" for c in STRING_COLUMNS + ("start", "sequence_length")},
                        **{f"{c}.list.element": "ZSTD" for c in TENSOR_COLUMNS}},
        "use_dictionary": list(STRING_COLUMNS),
        "write_statistics": list(STRING_COLUMNS) + ["start", "sequence_length"],
        "write_page_checksum": True,  # streaming readers check every page (preprocessing/keypoints/readers.py)
    }


@dataclass(frozen=True)
class ImageRows:
    """The image windows' row layout for the shared writer (`store.writer.ShardRows`): a planned
    piece is (sequence index, first window, end window)."""

    job: ImageJob

    def locate(self, plan: ShardPlan) -> tuple[Any, list[int]]:
        return None, sorted({i for group in plan.groups for i, _, _ in group})

    def tables(self, plan: ShardPlan, located: Any, inputs: dict[int, Any]) -> Iterator[Any]:
        for group in plan.groups:
            yield rows_table([piece_rows(inputs[i], lo, hi, self.job) for i, lo, hi in group])

    def parquet_options(self) -> dict:
        return parquet_options()

    def tally(self, table: Any) -> dict[str, int]:
        """Images in a row group: its real frames times its views."""
        views = table.schema.field("keypoints").type.shape[1]
        return {"images": int(table.column("mask").combine_chunks().to_numpy_ndarray().sum()) * views}


# ----------------------------------------------------------------------------- build and publish


def build_image_dataset(data: DataConfig, progress: Progress = print) -> Dataset:
    """Build (or find) the image dataset `data` describes (see module doc). Without the source
    files here, the one image dataset under `data.root` built from this data config (staged)."""
    from preprocessing.store.staged import find_staged, missing_sources

    if data.source.kind not in IMAGE_KINDS:
        raise DataError(f"source.kind={data.source.kind!r} is not an image source ({', '.join(IMAGE_KINDS)})")
    missing = missing_sources(data)
    if missing:
        return find_staged(data, image_config_for_id, missing, progress)
    started = time.monotonic()
    progress(f"loading {data.source.kind} source ...")
    src = load_image_sequences(data)
    if src.skipped:
        progress(f"skipped {len(src.skipped)} sequence(s) (images.on_missing=skip): " + "; ".join(src.skipped[:5]))
    files = hash_files(src.files)
    root = storage.open_location(data.root)
    id_ = image_dataset_id(data, [f["sha256"] for f in files])
    dataset = root.child(id_)
    check_root(root)
    if has_manifest(dataset):
        progress(f"dataset {id_} already built at {dataset.uri} (cache hit, nothing to do)")
        return Dataset(dataset, read_manifest_at(dataset), cached=True)

    sequences = [s for s in src.sequences if s.split in SPLITS]
    staging = staging_location(root, id_)
    job = ImageJob(data.source.kind, data.images, data.source.synthetic.seed)
    plans = plan_shards([(s.split, job.windows_of(s)) for s in sequences], data.images.windows_per_shard,
                        data.images.windows_per_group)
    progress(f"dataset {id_}: {len(sequences)} sequences x {len(src.cameras)} views -> {len(plans)} shards "
             f"(f={data.images.frames}, {data.images.size}px {data.images.format})")
    if src.boxes_file:
        progress(f"crop boxes of {', '.join(data.images.boxes_splits)}: around the 2D of {src.boxes_file}")

    def write() -> dict:
        shards = run_shard_tasks(plans, sequences, staging, ImageRows(job), progress)
        return _manifest(data, id_, src, files, sequences, job, shards, started)

    manifest = publish_dataset(root, id_, staging, write, progress, wait_s=data.lease_wait_s)
    if manifest is None:
        return Dataset(dataset, read_manifest_at(dataset), cached=True)
    shards = manifest["shards"]
    progress(f"published {dataset.uri}: {manifest['images']} images, {len(shards)} shards, "
             f"{manifest['total_bytes'] / 1e6:.1f} MB ({manifest['bytes_per_image']:.0f} bytes/image) "
             f"in {manifest['build_seconds']:.1f} s")
    return Dataset(dataset, manifest)


def _manifest(data, id_, src, files, sequences, job, shards, started) -> dict:
    from datetime import datetime, timezone

    from preprocessing.schema import to_dict
    from preprocessing.version import __version__

    splits: dict[str, dict] = {}
    for seq in sequences:
        s = splits.setdefault(seq.split, {"windows": 0, "images": 0, "frames": 0, "sequences": 0,
                                          "subjects": {}, "activities": {}})
        w = job.windows_of(seq)
        s["windows"] += w
        s["frames"] += seq.num_frames
        s["images"] += seq.num_frames * len(seq.cameras)
        s["sequences"] += 1
        s["subjects"][seq.subject] = s["subjects"].get(seq.subject, 0) + w
        s["activities"][seq.activity] = s["activities"].get(seq.activity, 0) + w
    for split, s in splits.items():
        mine = [r for r in shards if r["split"] == split]
        s["shards"], s["bytes"] = len(mine), sum(r["bytes"] for r in mine)
    total = sum(r["bytes"] for r in shards)
    images = sum(s["images"] for s in splits.values())
    cfg = data.images
    joints = src.skeleton.num_joints
    return {
        "id": id_,
        "kind": "images",
        "format_version": FORMAT_VERSION,
        "image_format": IMAGE_FORMAT,
        "raylift_version": __version__,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "build_seconds": round(time.monotonic() - started, 3),
        "config": to_dict(data),
        "source": {"kind": data.source.kind, "layout": src.skeleton.name, "joints": joints, "files": files},
        "images": images,
        "cameras": src.cameras,
        # (width, height) the 2D labels refer to, per camera: the `res` of predicted 2D files
        "image_sizes": {cam: [int(x) for x in wh] for cam, wh in zip(src.cameras, src.sequences[0].image_sizes)},
        "skipped": src.skipped,
        "windows": {"frames": cfg.frames, "views": len(src.cameras), "size": cfg.size, "format": cfg.format,
                    "flip": cfg.flip, "margin": cfg.margin, "boxes": boxes_record(data, src.boxes_file, files)},
        "columns": {"images": [cfg.frames * len(src.cameras)], "keypoints": [cfg.frames, len(src.cameras), joints, 2],
                    "boxes": [cfg.frames, len(src.cameras), 4], "mask": [cfg.frames], "frame": [cfg.frames]},
        "splits": splits,
        "shards": shards,
        "total_bytes": total,
        "bytes_per_image": total / max(images, 1),
    }
