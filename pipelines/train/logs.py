"""Per-epoch training logs in the run directory: `metrics.csv` and TensorBoard scalars.

The CSV is rewritten whole from the run's history every epoch (the history travels inside each
checkpoint), so after a worker failure and a redone epoch it never lists an epoch twice; the write
is atomic locally and a single object PUT on S3. TensorBoard event files are written locally by
tensorboardX: straight into `<run>/tensorboard` for a local run directory, or into a temporary
directory uploaded after every epoch for S3.
"""
from __future__ import annotations

import csv
import io
import os
import tempfile
from typing import Optional

import pyarrow.fs as pafs

from pipelines.train.checkpoints import Where
from preprocessing.store import storage

CSV_NAME = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
LEADING_COLUMNS = ("epoch", "loss")  # then every key in first-seen order: the validation metric, lr, ...


def csv_text(history: list[dict]) -> str:
    """History rows as CSV: the leading columns first, then any other keys in first-seen order."""
    columns = list(LEADING_COLUMNS)
    for row in history:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k, "") for k in columns})
    return buf.getvalue()


def read_csv(run_uri: Where) -> list[dict]:
    """metrics.csv of a run as dicts of floats (empty when absent)."""
    loc = storage.as_location(run_uri).child(CSV_NAME)
    if not storage.exists(loc):
        return []
    rows = []
    for raw in csv.DictReader(io.StringIO(storage.read_bytes(loc).decode())):
        rows.append({k: float(v) for k, v in raw.items() if v not in ("", None)})
    return rows


class RunLog:
    """Writes the run's CSV and TensorBoard scalars (rank 0 only)."""

    def __init__(self, run_uri: Where) -> None:
        from tensorboardX import SummaryWriter

        self.run = storage.as_location(run_uri)
        self._local = isinstance(self.run.fs, pafs.LocalFileSystem)
        self._tmp: Optional[tempfile.TemporaryDirectory] = None
        if self._local:
            logdir = os.path.join(self.run.path, TENSORBOARD_DIR)
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="raylift-tb-")
            logdir = self._tmp.name
        self._logdir = logdir
        self.writer = SummaryWriter(logdir=logdir)

    def write(self, history: list[dict]) -> None:
        """Log the newest row to TensorBoard and rewrite the CSV from the whole history."""
        row = history[-1]
        step = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"train/{key}", float(value), step)
        self.writer.flush()
        storage.write_bytes(self.run.child(CSV_NAME), csv_text(history).encode())
        if not self._local:
            for name in os.listdir(self._logdir):
                with open(os.path.join(self._logdir, name), "rb") as f:
                    storage.write_bytes(self.run.child(TENSORBOARD_DIR, name), f.read())

    def close(self) -> None:
        self.writer.close()
        if self._tmp is not None:
            self._tmp.cleanup()
