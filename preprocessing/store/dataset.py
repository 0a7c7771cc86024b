"""`Dataset`: a prepared dataset, opened once (its location and manifest) and passed down.

Every reader, evaluation and training step takes this handle instead of a URI string, so a
dataset's location is parsed and its manifest read once per command (and shipped to Ray workers
with it: a `Location` pickles its filesystem, S3 settings included).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from preprocessing.errors import DataError
from preprocessing.store import storage
from preprocessing.store.manifest import read_manifest_at
from preprocessing.store.storage import Location


def is_dataset_id(ref: str) -> bool:
    """Whether `ref` (a `--data` value, data.dataset) names a dataset by its id under a datasets
    root, rather than by its URI or path: an id has no path separator."""
    return "/" not in ref and "\\" not in ref


@dataclass(frozen=True)
class Dataset:
    """A prepared dataset: `location` (`<root>/<id>`) and its `manifest` (preprocessing/store/
    manifest.py; keypoint windows or, `kind: images`, person crops). `cached`: the build that
    returned it found it already built (a cache hit) and wrote nothing."""

    location: Location
    manifest: dict
    cached: bool = False

    @classmethod
    def open(cls, where: Union[str, Location, "Dataset"]) -> "Dataset":
        """The dataset at a URI or location (a DataError naming it when there is none); a
        `Dataset` is returned as it is."""
        if isinstance(where, Dataset):
            return where
        location = storage.as_location(where)
        return cls(location, read_manifest_at(location))

    @property
    def uri(self) -> str:
        return self.location.uri

    @property
    def id(self) -> str:
        return str(self.manifest["id"])

    @property
    def kind(self) -> str:
        """"keypoints" (2D windows for the lifters) or "images" (person crops)."""
        return str(self.manifest.get("kind", "keypoints"))

    @property
    def source(self) -> dict[str, Any]:
        return self.manifest.get("source") or {}

    @property
    def layout(self) -> str:
        """The skeleton layout's name (`preprocessing.skeleton`)."""
        return str(self.source.get("layout") or ("mpi_inf_3dhp" if self.source.get("kind") == "mpi3dhp" else "h36m"))

    @property
    def joints(self) -> int:
        from preprocessing.skeleton import get_skeleton

        return int(self.source.get("joints") or get_skeleton(self.layout).num_joints)

    @property
    def windows(self) -> dict[str, Any]:
        """The manifest's window description (mode, frames, flip, multiview, ...)."""
        return self.manifest.get("windows") or {}

    @property
    def splits(self) -> dict[str, dict]:
        return self.manifest.get("splits") or {}

    def windows_in(self, split: str) -> int:
        """Rows of `split` (0 when the dataset has no such split)."""
        return int((self.splits.get(split) or {}).get("windows", 0))

    def shard_records(self, split: str) -> list[dict]:
        """The manifest's records (path, rows, bytes, sha256) of `split`'s shards, in row order;
        DataError naming the available splits when it has none."""
        records = [s for s in self.manifest["shards"] if s["split"] == split]
        if not records:
            available = sorted(k for k, v in self.splits.items() if v.get("windows"))
            raise DataError(f"dataset {self.uri} has no {split!r} split (available: {', '.join(available) or 'none'})")
        return records

    def shards(self, split: str) -> list[Location]:
        return [self.location.child(s["path"]) for s in self.shard_records(split)]

    def sha256_of(self, shard: Location) -> str:
        """The manifest's sha256 of one of this dataset's shards."""
        rel = shard.path[len(self.location.path.rstrip("/")) + 1:]
        return next(s["sha256"] for s in self.manifest["shards"] if s["path"] == rel)
