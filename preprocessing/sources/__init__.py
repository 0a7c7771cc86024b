"""Sources -> canonical sequences: `load_sequences(source)` dispatches on `source.kind`.

- `synthetic`: generate (or reuse) the VideoPose3D-format files of `source.synthetic`
  (`preprocessing.sources.synthetic`), then read them with the generic loader; default split S1,S5-S8 /
  S9,S11 (by subject name), overridden by `source.train_subjects` / `test_subjects`.
- `h36m`, `generic`: `preprocessing.sources.videopose3d`.
- `mpi3dhp`: `preprocessing.sources.mpi3dhp`.
Every problem with the input raises `DataError` naming the file, key or value.
"""
from __future__ import annotations

from dataclasses import dataclass

from preprocessing.cameras import load_cameras
from preprocessing.config import SourceConfig
from preprocessing.errors import DataError
from preprocessing.sequences import Sequence
from preprocessing.skeleton import H36M17, MPI17, Skeleton
from preprocessing.sources.mpi3dhp import load_mpi3dhp
from preprocessing.sources.videopose3d import load_generic, load_h36m, load_videopose3d
from preprocessing.sources.synthetic import default_split, ensure_synthetic


@dataclass
class SourceData:
    sequences: list[Sequence]  # one per (subject, action, camera), split "train"/"test"
    skeleton: Skeleton  # H36M17 or MPI17
    files: list[str]  # absolute paths of every input file read (for hashing)


def load_synthetic(source: SourceConfig, gt_2d: bool = False) -> tuple[list[Sequence], list[str]]:
    """The synthetic sequences and their files; 2D from the detector-like file when `noise_px > 0`,
    or with `gt_2d` always the ground-truth projection (the labels of rendered images)."""
    files = ensure_synthetic(source.synthetic)
    train, test = default_split(list(source.synthetic.subjects))
    data_2d = files.gt_2d if gt_2d else files.data_2d
    sequences = load_videopose3d(
        files.data_3d, data_2d, load_cameras(files.cameras),
        source.train_subjects or train, source.test_subjects or test, activities=source.activities,
    )
    return sequences, [files.data_3d, data_2d, files.cameras]


def hold_out(sequences: list[Sequence], val_subjects: list[str], where: str) -> list[Sequence]:
    """Move the training sequences of `val_subjects` into the "val" split (test-style windows:
    each real frame once, no flipped copies)."""
    found = {s.subject for s in sequences if s.subject in val_subjects and s.split == "train"}
    missing = sorted(set(val_subjects) - found)
    if missing:
        raise DataError(f"{where}: source.val_subjects {missing} have no training sequences "
                        f"(training subjects: {sorted({s.subject for s in sequences if s.split == 'train'})})")
    for seq in sequences:
        if seq.subject in found:
            seq.split = "val"
    return sequences


def load_sequences(source: SourceConfig) -> SourceData:
    """Read `source` into canonical sequences (see preprocessing/sequences.py). Raises DataError."""
    loaders = {"synthetic": load_synthetic, "h36m": load_h36m, "generic": load_generic, "mpi3dhp": load_mpi3dhp}
    if source.kind not in loaders:
        raise DataError(f"source.kind: unknown source {source.kind!r} (expected one of {sorted(loaders)})")
    sequences, files = loaders[source.kind](source)
    if source.val_subjects:
        sequences = hold_out(sequences, source.val_subjects, files[0])
    skeleton = MPI17 if source.kind == "mpi3dhp" else H36M17
    for seq in sequences:
        try:
            seq.check()
        except ValueError as e:
            raise DataError(f"{files[0]}: {e}") from None
    return SourceData(sequences=sequences, skeleton=skeleton, files=files)
