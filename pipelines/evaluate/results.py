"""Evaluation results as a person reads them: the labels of how a checkpoint was made and chosen,
the console lines and tables, and `results.md` / `results.json`."""
from __future__ import annotations

import json
import math
from typing import Any, Mapping

import numpy as np

from pipelines.evaluate import metrics
from preprocessing.store import storage


def run_labels(cfg: Mapping[str, Any], checkpoint: str) -> dict[str, str]:
    """How a checkpoint was made and chosen, for every results header: the checkpoint rule
    (`checkpoint`, e.g. the train.select label), the training precision and the training order,
    read from the run's experiment config (a checkpoint's meta "config")."""
    train = cfg.get("train") or {}
    windows = (cfg.get("data") or {}).get("windows") or {}
    precision = train.get("precision", "unknown")
    precision = {"fp32": "fp32 (the authors' numerics)", "bf16": "bf16 autocast forward, fp32 losses"}.get(
        precision, str(precision))
    buffer = train.get("shuffle_buffer")
    buffer = f"{buffer} windows" if buffer is not None else f"the worker's share, up to {train.get('shuffle_buffer_mb')} MiB"
    order = (f"train.shuffle {train.get('shuffle', 'unknown')}: rows stored {windows.get('row_order', 'in sequence order')}, "
             f"a (seed {train.get('seed')}, epoch) permutation of row groups per epoch, shuffle buffer {buffer}")
    return {"checkpoint": checkpoint, "precision": precision, "training order": order}


def run_summary(result: dict[str, Any]) -> str:
    """One console line of what a result depends on beyond its protocol: what the model read, the
    checkpoint rule, the training precision and order (`protocol_spec`)."""
    spec = result.get("protocol_spec") or {}
    return "; ".join(f"{k}: {spec[k]}" for k in ("model inputs", "checkpoint", "precision", "training order") if k in spec)


def result_tables(result: dict[str, Any], markdown: bool = False) -> str:
    fmt = metrics.markdown_table if markdown else metrics.format_table
    return fmt(result["results"], result["metrics"], result["group_mean_label"],
               result.get("frame_wise_label", "frame-wise"))


def results_markdown(result: dict[str, Any]) -> str:
    lines = ["# raylift evaluation", ""]
    for key in ("checkpoint", "model_name", "epoch", "dataset", "layout", "windows", "frames"):
        if key in result:
            lines.append(f"- {key}: `{result[key]}`")
    lines.append(f"- protocol: {result['protocol']}")
    for key, value in (result.get("protocol_spec") or {}).items():
        lines.append(f"  - {key}: {value}")
    lines += ["", result_tables(result, markdown=True), ""]
    if "baseline" in result["results"]:
        lines.append("`baseline` = the mean training pose predicted for every frame, scored with the same protocol.")
    lines += [f"- {n}" for n in result.get("notes", [])]
    return "\n".join(lines) + "\n"


def write_results(result: dict[str, Any], out: str) -> None:
    """Write `results.json` and `results.md` into `out`, a local directory or a storage URI (each
    file atomically)."""
    where = storage.open_location(out)
    storage.write_bytes(where.child("results.json"), (json.dumps(_json_safe(result), indent=1) + "\n").encode())
    storage.write_bytes(where.child("results.md"), results_markdown(result).encode())


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
