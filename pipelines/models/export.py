"""`raylift export`: a keypoint lifter as ONNX or TorchScript, checked against PyTorch before it is kept.

The exported graph takes one batch of windows exactly as the PyTorch model does: `keypoints_2d`
(B, T, J, 2) in the field's normalised screen coordinates (`x / w * 2 - [1, h / w]`), T and J the
checkpoint's, B free; it returns `poses_3d` (B, T, J, 3) for seq2seq models or (B, 1, J, 3) for
seq2frame ones, root-relative metres. Test-time flip, windowing and normalisation stay outside the
graph, as in `raylift infer`; `<output>.json` records what a caller needs (T, J, the layout, the
output mode, the convention and the check).

- `onnx`: `torch.onnx.export` with the TorchScript-based exporter (opset 17, a dynamic batch axis),
  run back through ONNX Runtime on CPU.
- `torchscript`: `torch.jit.trace` on a window batch, run back through TorchScript.

The check feeds `CHECK_WINDOWS` random windows (seeded) to both and reports the largest absolute
difference; above `MAX_ABS_DIFF` (1e-4) nothing is written and the command fails. Files appear
only complete: they are written beside the output under a temporary name and renamed after the
check.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipelines.config import add_location_argument
from preprocessing.errors import DataError

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
CHECK_WINDOWS = 8
MAX_ABS_DIFF = 1e-4
OPSET = 17


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_location_argument(parser, "--checkpoint", role="input", required=True, help="raylift checkpoint directory")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx or torchscript")
    add_location_argument(parser, "--output", role="output", required=True,
                          help="the exported file (.onnx / .pt added when missing); metadata in <output>.json")


def load_for_export(checkpoint: str) -> tuple[Any, dict]:
    """The checkpoint's keypoint lifter in eval mode on CPU; image and multi-view models are refused."""
    from models.checkpoint import CheckpointError, load_model

    model, meta = load_model(checkpoint)
    name = meta["model"].get("name")
    if getattr(model, "multiview", False) or getattr(model, "input_kind", "keypoints") != "keypoints":
        raise CheckpointError(f"{checkpoint}: {name!r} is not a single-view keypoint lifter; export takes those")
    return model.eval().cpu(), meta


def example_windows(meta: dict, n: int, seed: int = 0) -> np.ndarray:
    """(n, T, J, 2) float32 windows in the normalised screen range."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, (n, int(meta["frames"]), int(meta["joints"]), 2)).astype(np.float32)


def export_torchscript(model: Any, example: np.ndarray, path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """Trace `model` to `path`; returns a runner of the saved file."""
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks fixed at the traced T, J
        torch.jit.trace(model, torch.from_numpy(example), check_trace=False).save(str(path))
    loaded = torch.jit.load(str(path))

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return loaded(torch.from_numpy(x)).numpy()

    return run


def export_onnx(model: Any, example: np.ndarray, path: Path, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """Export `model` to `path` (a dynamic batch axis); returns an ONNX Runtime runner of the file
    (`threads` intra-op threads; 0: ONNX Runtime's default)."""
    import torch

    try:
        import onnxruntime as ort
    except ImportError:
        raise DataError("--format onnx needs onnx and onnxruntime (pip install 'raylift[export]')") from None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings and the exporter's deprecation notice
        torch.onnx.export(model, (torch.from_numpy(example),), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["keypoints_2d"], output_names=["poses_3d"],
                          dynamic_axes={"keypoints_2d": {0: "batch"}, "poses_3d": {0: "batch"}})
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"keypoints_2d": x})[0]


EXPORTERS = {"onnx": export_onnx, "torchscript": export_torchscript}


def check_export(model: Any, meta: dict, runner: Callable[[np.ndarray], np.ndarray], fmt: str, source: str) -> float:
    """The largest |exported - PyTorch| on `CHECK_WINDOWS` seeded random windows; raises DataError
    naming `source` when it exceeds `MAX_ABS_DIFF`."""
    import torch

    checks = example_windows(meta, CHECK_WINDOWS, seed=1)
    with torch.no_grad():
        reference = model(torch.from_numpy(checks)).numpy()
    diff = float(np.abs(runner(checks) - reference).max())
    if not diff <= MAX_ABS_DIFF:
        raise DataError(f"{source}: the {fmt} export differs from PyTorch by {diff:.3g} "
                        f"(> {MAX_ABS_DIFF:g}) on {CHECK_WINDOWS} random windows; nothing written")
    return diff


def export(checkpoint: str, fmt: str, output: str) -> dict[str, Any]:
    """Export, check against PyTorch, then move into place; returns the metadata written beside it."""
    model, meta = load_for_export(checkpoint)
    target = Path(output)
    if target.suffix != SUFFIX[fmt]:
        target = target.with_name(target.name + SUFFIX[fmt])
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=SUFFIX[fmt], dir=target.parent)
    os.close(fd)
    sidecar = target.with_name(target.name + ".json")
    sidecar_tmp = sidecar.with_name(f".{sidecar.name}.tmp")
    try:
        diff = check_export(model, meta, EXPORTERS[fmt](model, example_windows(meta, 2), Path(tmp)), fmt, checkpoint)
        info = {
            "format": fmt, "file": target.name, "checkpoint": str(Path(checkpoint).resolve()),
            "model": meta["model"], "frames": int(meta["frames"]), "joints": int(meta["joints"]),
            "layout": meta.get("layout"), "output_mode": model.output_mode,
            "input": {"name": "keypoints_2d", "shape": ["batch", int(meta["frames"]), int(meta["joints"]), 2],
                      "coordinates": "normalised screen: x / w * 2 - [1, h / w]"},
            "output": {"name": "poses_3d", "units": "metres, root-relative, camera space"},
            "check": {"windows": CHECK_WINDOWS, "max_abs_diff": diff, "limit": MAX_ABS_DIFF},
        }
        sidecar_tmp.write_text(json.dumps(info, indent=1))
        os.replace(tmp, target)
        os.replace(sidecar_tmp, sidecar)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        sidecar_tmp.unlink(missing_ok=True)
        raise
    info["path"] = str(target)
    return info


def run(args: argparse.Namespace) -> int:
    info = export(args.checkpoint, args.format, args.output)
    print(f"exported {info['model'].get('name')} (T={info['frames']}, {info['output_mode']}) to {info['path']}: "
          f"max |{args.format} - PyTorch| = {info['check']['max_abs_diff']:.2g} on {CHECK_WINDOWS} random windows")
    return 0
