"""Window plans for lifting a whole sequence of any length: every frame predicted exactly once.

- seq2seq (MixSTE, Fusionformer): ceil(N/T) non-overlapping windows of T frames centred on the
  sequence (offset = (chunks*T - N)//2, docs/field_notes.md), edge-padded at both ends; each real frame
  lies in exactly one window, and its prediction is taken from there.
- seq2frame (PoseFormer, CrossFormer): one window per frame, frames [i-p, i+p] edge-padded
  (T = 2p+1); the prediction of frame i is the window's single output.

These are exactly the test-split windows of `preprocessing.keypoints.windows` (whose start and edge-clipped
index functions are used here), so inference on a sequence sees what evaluation sees. A plan is
just the window start frames; windows are gathered batch by batch (a long sequence never holds all
its seq2frame windows in memory) and their outputs scattered back to frames.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from preprocessing.keypoints.windows import frame_indices, window_starts


@dataclass(frozen=True)
class WindowPlan:
    """Windows of `frames` frames over a sequence of `num_frames` frames.

    `starts[k]` is the sequence index of window k's first frame (may be negative or run past the
    end: those positions are edge-padded). `mode` says which window positions are predictions.
    """

    mode: str  # "seq2seq" | "seq2frame"
    frames: int  # T
    num_frames: int  # N
    starts: np.ndarray  # (S,) int64

    @property
    def num_windows(self) -> int:
        return int(self.starts.shape[0])

    def indices(self, window: slice | np.ndarray) -> np.ndarray:
        """(S', T) edge-clipped input frame indices of the selected windows."""
        return frame_indices(self.starts[window], self.frames, self.num_frames)

    def targets(self, window: slice | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For the selected windows' outputs: (output positions (S', K), target frames (S', K)).

        seq2seq: K = T, target frame = start + t, positions outside [0, N) are padding and get
        target -1. seq2frame: K = 1, position 0 targets the centre frame.
        """
        starts = self.starts[window]
        if self.mode == "seq2seq":
            frames = starts[:, None] + np.arange(self.frames)[None, :]
            frames = np.where((frames >= 0) & (frames < self.num_frames), frames, -1)
            positions = np.broadcast_to(np.arange(self.frames), frames.shape)
            return positions, frames
        centre = starts[:, None] + self.frames // 2
        return np.zeros_like(centre), centre

    def coverage(self) -> np.ndarray:
        """(N,) how many times each frame is predicted (all ones for a correct plan)."""
        _, frames = self.targets(slice(None))
        frames = frames[frames >= 0]
        return np.bincount(frames, minlength=self.num_frames)


def plan_windows(num_frames: int, frames: int, mode: str) -> WindowPlan:
    """The window plan that predicts each of `num_frames` frames exactly once with windows of T."""
    starts = window_starts(num_frames, mode, frames, stride=frames, split="test")
    return WindowPlan(mode=mode, frames=frames, num_frames=num_frames, starts=starts)


def iter_batches(plan: WindowPlan, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of at most `batch_size` windows."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    for first in range(0, plan.num_windows, batch_size):
        yield slice(first, min(first + batch_size, plan.num_windows))


def stitch_into(out: np.ndarray, predictions: np.ndarray, plan: WindowPlan, window: slice) -> None:
    """Write the batch's predictions (S', K, J, 3) into the per-frame array `out` (N, J, 3)."""
    positions, frames = plan.targets(window)
    keep = frames >= 0
    rows = np.broadcast_to(np.arange(predictions.shape[0])[:, None], frames.shape)
    out[frames[keep]] = predictions[rows[keep], positions[keep]]
