"""`raylift two-stage --config configs/two_stage_synthetic.yaml`: both stages of the paper's system.

```yaml
name: two_stage_synthetic
storage_path: runs
stages:
  images: {data: ..., model: {name: mpstr, ...}, train: ...}   # stage 1: an image experiment
  compare_baseline: true   # also train model.baseline=true (no relations) for the Table I comparison
  lifter: {data: {windows: ...}, model: {name: poseformer, ...}, train: ...}  # stage 2
  detector_2d: ""          # optional VideoPose3D 2D file: the lifter is trained on it as well
```
Steps (Ray Train for every training, each in its own run directory under
`<storage_path>/<name>/`, so re-running resumes or reuses finished runs):
1. train the image model (`raylift train` on `stages.images`) and print its 2D table; with
   `compare_baseline`, the no-relations baseline too, and Table I (baseline vs full);
2. predict 2D for every frame of every camera of the image dataset (`raylift predict2d`) into
   `<storage_path>/<name>/predicted_2d.npz` (VideoPose3D format);
3. train the same lifter on the predicted 2D, on the ground-truth 2D the crops were labelled with,
   and on `detector_2d` when given (the lifter's `data.source` is set to a generic VideoPose3D
   source with the image source's 3D, cameras and subject split; h36m with its built-in cameras
   when the image source names no cameras JSON);
4. print and write (`two_stage.md`, `two_stage.json`) 3D MPJPE / P-MPJPE per 2D input.
"""
from __future__ import annotations

import argparse
import copy
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from pipelines.config import config_from_dict
from preprocessing.errors import DataError
from preprocessing.schema import ConfigError, apply_overrides, load_yaml, parse_dataclass


@dataclass
class StagesConfig:
    images: dict[str, Any] = field(default_factory=dict)  # an experiment config for an image model
    lifter: dict[str, Any] = field(default_factory=dict)  # an experiment config for a lifter
    compare_baseline: bool = False  # also train the no-relations baseline (the paper's Table I)
    detector_2d: str = ""  # optional VideoPose3D 2D file for a third lifter run
    predict_batch_size: int = 8  # windows per forward pass when predicting 2D

    def validate(self) -> None:
        from pipelines.train.driver import is_image_config

        for key in ("images", "lifter"):
            if not getattr(self, key):
                raise ValueError(f"stages.{key}: expected an experiment config (data/model/train)")
        try:
            images, lifter = config_from_dict(self.images), config_from_dict(self.lifter)
        except ConfigError as e:
            raise ConfigError(f"stages: {e}") from None
        if not is_image_config(images):
            raise ValueError(f"stages.images.model.name: {images.model.name!r} takes 2D keypoints; stage 1 needs "
                             "an image model (mpstr)")
        if is_image_config(lifter) or lifter.data.windows.multiview:
            raise ValueError(f"stages.lifter.model.name: {lifter.model.name!r} is not a single-view lifter")
        src = images.data.source
        if src.kind == "synthetic_images" and src.data_3d and not src.cameras:
            raise ValueError("stages.images.data.source: stage 2 needs the cameras the crops were rendered "
                             "through (cameras)")


@dataclass
class TwoStageConfig:
    name: str = "two_stage"
    storage_path: str = "runs"
    stages: StagesConfig = field(default_factory=StagesConfig)


def load_two_stage(path: str, overrides: Optional[list[str]] = None) -> TwoStageConfig:
    """Read and validate a two-stage YAML; errors name the file and the key."""
    try:
        return parse_dataclass(TwoStageConfig, apply_overrides(load_yaml(path), overrides or []), "")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def label_files(images_cfg) -> tuple[str, str, str]:
    """(data_3d, GT data_2d, cameras) the image source's crops were labelled with."""
    src = images_cfg.data.source
    if src.kind == "synthetic_images" and not src.data_3d:
        from preprocessing.sources.synthetic import ensure_synthetic

        files = ensure_synthetic(src.synthetic)
        return files.data_3d, files.gt_2d, files.cameras  # the crops' labels: the GT projection
    return src.data_3d, src.data_2d, src.cameras


def lifter_config(two: TwoStageConfig, data_3d: str, data_2d: str, cameras: str, subjects: dict[str, list[str]],
                  tag: str):
    """The stage-2 experiment on one 2D file: the lifter config with a generic source (or the h36m
    source, with its built-in cameras, when the image source gave no cameras JSON)."""
    raw = copy.deepcopy(two.stages.lifter)
    data = raw.setdefault("data", {})
    data["source"] = {"kind": "generic" if cameras else "h36m", "data_3d": data_3d, "data_2d": data_2d,
                      "train_subjects": subjects["train"], "test_subjects": subjects["test"],
                      **({"cameras": cameras} if cameras else {})}
    raw["name"] = f"{two.name}_lifter_{tag}"
    raw.setdefault("train", {})["storage_path"] = f"{two.storage_path.rstrip('/')}/{two.name}"
    return config_from_dict(raw)


def _image_config(two: TwoStageConfig, baseline: bool):
    raw = copy.deepcopy(two.stages.images)
    raw["name"] = f"{two.name}_images" + ("_baseline" if baseline else "")
    raw.setdefault("train", {})["storage_path"] = f"{two.storage_path.rstrip('/')}/{two.name}"
    if baseline:
        raw.setdefault("model", {})["baseline"] = True
    return config_from_dict(raw)


MEAN_POSE_3D = "mean pose (the training mean, root-relative)"


def stage2_row(label: str, lifter: str, summary: dict[str, Any], path: str, run_uri: str,
               protocol: str) -> dict[str, Any]:
    """One row of the stage-2 table from an evaluation summary (`results["model"]` or `["baseline"]`)."""
    return {"input": label, "lifter": lifter, "file": path, "run": run_uri, "mpjpe": summary["group_mean"]["mpjpe"],
            "p_mpjpe": summary["group_mean"]["p_mpjpe"], "frames": summary["frames"], "protocol": protocol}


def final_table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    """3D MPJPE / P-MPJPE (mm, action-wise mean) per 2D input."""
    head = ["2D input", "lifter", "MPJPE mm", "P-MPJPE mm", "frames"]
    body = [[r["input"], r["lifter"], f"{r['mpjpe']:.2f}", f"{r['p_mpjpe']:.2f}", str(r["frames"])] for r in rows]
    from pipelines.viz.tables import render_table

    return render_table(head, body, markdown, left=2)


def run_two_stage(two: TwoStageConfig, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run both stages (see module doc); returns {"stage1": 2D result, "prediction": file
    metadata, "stage2": rows of the final table}."""
    from pipelines.evaluate.batch import placement_for
    from pipelines.evaluate.images2d import evaluate_image_checkpoint, result_text
    from pipelines.evaluate.predict2d import predict_2d_file
    from pipelines.train.driver import run_training
    from preprocessing.store import storage

    home = storage.open_location(f"{two.storage_path.rstrip('/')}/{two.name}")
    progress("== stage 1: images -> 2D")
    images_cfg = _image_config(two, baseline=False)
    full = run_training(images_cfg, evaluate_after=False, progress=progress)
    if full.selected_checkpoint is None:
        raise DataError(f"stage 1 ({images_cfg.name}) produced no checkpoint")
    baseline_ckpt = None
    if two.stages.compare_baseline:
        base = run_training(_image_config(two, baseline=True), dataset=full.dataset, evaluate_after=False,
                            progress=progress)
        baseline_ckpt = base.selected_checkpoint
    # Both stages' forward passes run as Ray Data batch inference on the image model's training
    # resources; the workers read the checkpoints from the run's storage.
    placement = placement_for(images_cfg.train)
    stage1 = evaluate_image_checkpoint(full.selected_checkpoint, full.dataset, placement, compare=baseline_ckpt,
                                       batch_size=two.stages.predict_batch_size, ship=False, progress=progress)
    progress(result_text(stage1))

    progress("== stage 1 -> 2: predicted 2D for every frame of every camera")
    pred_path = home.child("predicted_2d.npz").path
    prediction = predict_2d_file(full.selected_checkpoint, full.dataset, pred_path, placement,
                                 batch_size=two.stages.predict_batch_size, ship=False, progress=progress)
    subjects = {split: sorted(full.dataset.splits[split]["subjects"]) for split in ("train", "test")}
    data_3d, gt_2d, cameras = label_files(images_cfg)

    progress("== stage 2: 2D -> 3D")
    inputs = [("predicted 2D (" + images_cfg.model.name + ")", "predicted", pred_path), ("ground-truth 2D", "gt", gt_2d)]
    if two.stages.detector_2d:
        inputs.append(("detector 2D (" + two.stages.detector_2d + ")", "detector", two.stages.detector_2d))
    rows, baseline = [], None
    for label, tag, path in inputs:
        cfg = lifter_config(two, data_3d, path, cameras, subjects, tag)
        outcome = run_training(cfg, evaluate_after=True, progress=progress)
        scored = outcome.evaluation["results"]
        rows.append(stage2_row(label, cfg.model.name, scored["model"], path, outcome.run_uri,
                               outcome.evaluation["protocol"]))
        baseline = baseline or scored.get("baseline")  # the same 3D data for every input: one mean pose
    if baseline is not None:
        rows.append(stage2_row("(none: a constant pose)", MEAN_POSE_3D, baseline, "", "", rows[0]["protocol"]))
    table = final_table(rows)
    progress("== two-stage result: 3D from each 2D input (action-wise mean, " + rows[0]["protocol"] + ")")
    progress(table)
    result = {"stage1": stage1, "prediction": prediction, "stage2": rows}
    storage.write_bytes(home.child("two_stage.json"), (json.dumps(result, indent=1, default=str) + "\n").encode())
    md = ["# raylift two-stage", "", result_text(stage1, markdown=True), "", "## Stage 2: 3D", "",
          final_table(rows, markdown=True), "", f"protocol: {rows[0]['protocol']}", ""]
    storage.write_bytes(home.child("two_stage.md"), "\n".join(md).encode())
    progress(f"results: {home.uri}/two_stage.md")
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipelines.config import add_config_arguments

    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    run_two_stage(load_two_stage(args.config, args.overrides))
    return 0
