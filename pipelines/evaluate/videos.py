"""Many videos to 2D at once: Ray Data batch inference of `preprocessing.sources.video_pose`.

`raylift infer --video a.mp4 b.mp4 ...` maps one row per video through the ONNX detector and pose
model: on actors with the placement's GPUs or custom resources (each loads the two models once;
ONNX Runtime's CUDA provider is used where it is installed), else on CPU tasks. The models' bytes
travel once through the object store, so workers need not see the user's files; videos are read
through raylift's storage layer, so on a cluster they may be object-store URIs. Each row comes back
as flat arrays (every person of every frame, with its frame index and box), and the driver rebuilds
the `Detections` and lifts them.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from pipelines.evaluate.batch import Placement, ensure_ray
from preprocessing.sources.detectors import Detections, Person
from preprocessing.store import storage


class VideoTo2D:
    """A Ray Data callable: one video row in, its detections as flat arrays out."""

    def __init__(self, pose_ref: Any, det_ref: Optional[Any]) -> None:
        import ray

        from preprocessing.sources.video_pose import PersonDetector, PoseModel

        self.pose = PoseModel(ray.get(pose_ref))
        self.detector = PersonDetector(ray.get(det_ref)) if det_ref is not None else None

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        from preprocessing.sources.video_pose import video_fps, video_to_detections

        with storage.local_copy(row["video"]) as path:
            det = video_to_detections(path, self.pose, self.detector, name=row["video"])
            fps = video_fps(path)
        people = [(i, p) for i, frame in enumerate(det.frames) for p in frame]
        return {
            "video": row["video"], "order": row["order"], "num_frames": len(det.frames), "layout": det.layout,
            "width": det.width, "height": det.height, "fps": -1.0 if fps is None else fps,
            "keypoints": np.stack([p.keypoints for _, p in people]),
            "frame": np.array([i for i, _ in people], dtype=np.int64),
            "box": np.array([p.box for _, p in people], dtype=np.float64),
        }


def detections_of_row(row: dict[str, Any]) -> tuple[Detections, Optional[float]]:
    """The `Detections` (and frame rate) a `VideoTo2D` row describes."""
    frames: list[list[Person]] = [[] for _ in range(int(row["num_frames"]))]
    for kp, i, box in zip(row["keypoints"], row["frame"], row["box"]):
        frames[int(i)].append(Person(np.asarray(kp), None, tuple(float(v) for v in box)))
    fps = float(row["fps"])
    return Detections(frames, str(row["layout"]), float(row["width"]), float(row["height"])), (fps if fps > 0 else None)


def _model_bytes(uri: Optional[str]) -> Optional[bytes]:
    return None if uri is None else storage.read_bytes(storage.open_location(uri))


def videos_to_detections_on_ray(videos: list[str], pose_model: str, det_model: Optional[str],
                                placement: Placement) -> list[tuple[Detections, Optional[float]]]:
    """Each video's detections and frame rate, in the order given, computed by Ray Data."""
    import ray

    from preprocessing.sources.video_pose import PersonDetector, PoseModel

    # Checked here first, so a wrong file is one line from the driver rather than a worker's traceback.
    pose_bytes, det_bytes = _model_bytes(pose_model), _model_bytes(det_model)
    PoseModel(pose_bytes, name=pose_model)
    if det_bytes is not None:
        PersonDetector(det_bytes, name=det_model)
    ensure_ray()
    pose_ref = ray.put(pose_bytes)
    det_ref = ray.put(det_bytes) if det_bytes is not None else None
    ds = ray.data.from_items([{"video": v, "order": i} for i, v in enumerate(videos)], override_num_blocks=len(videos))
    kwargs: dict[str, Any] = dict(fn_constructor_args=(pose_ref, det_ref), num_cpus=placement.cpus)
    if placement.accelerated:
        kwargs.update(concurrency=placement.actors, num_gpus=placement.gpus, resources=placement.resources or None)
    else:
        kwargs.update(concurrency=(1, max(1, len(videos))))
    rows = sorted(ds.map(VideoTo2D, **kwargs).take_all(), key=lambda r: int(r["order"]))
    return [detections_of_row(r) for r in rows]
