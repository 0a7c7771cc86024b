"""Training-curve figure: loss and validation MPJPE per epoch (matplotlib, Agg backend); the
mean-pose reference line other figures draw beside their scores."""
from __future__ import annotations

import io
import math
from typing import Any, Optional


def draw_mean_pose(ax: Any, value: Optional[float]) -> None:
    """The mean pose's score (pipelines/train/baseline.py) as a dashed grey line across `ax`,
    labelled for its legend; nothing when there is none (image models)."""
    if value is not None:
        ax.axhline(value, color="grey", linestyle="--", label=f"mean pose ({value:.1f})")


def training_curves_png(history: list[dict], title: str = "") -> bytes:
    """PNG bytes of two panels: training loss and validation MPJPE (mm), plus the lr on a twin axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        raise ValueError("no epochs to plot")
    epochs = [int(r["epoch"]) for r in history]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["loss"] for r in history], marker="o", color="C0")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title("training loss")
    if any(r.get("lr") for r in history):
        ax_lr = ax_loss.twinx()
        ax_lr.plot(epochs, [r.get("lr", math.nan) for r in history], color="C2", linestyle="--", label="lr")
        ax_lr.set_ylabel("learning rate", color="C2")
    pixels = any("val_px" in r for r in history)  # an image model: the 2D error in full-image pixels
    metric, unit, name = ("val_px", "px", "2D error") if pixels else ("val_mpjpe", "mm", "MPJPE")
    vals = [r.get(metric, math.nan) for r in history]
    ax_val.plot(epochs, vals, marker="o", color="C1")
    finite = [(e, v) for e, v in zip(epochs, vals) if math.isfinite(v)]
    if finite:
        e_best, v_best = min(finite, key=lambda p: p[1])
        ax_val.scatter([e_best], [v_best], color="k", zorder=3, label=f"best {v_best:.1f} {unit} (epoch {e_best})")
        ax_val.legend()
    ax_val.set_xlabel("epoch")
    ax_val.set_ylabel(f"validation {name} ({unit})")
    ax_val.set_title(f"validation {name} (no flip)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
