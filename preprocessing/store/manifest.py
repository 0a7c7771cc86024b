"""A dataset's manifest: what it was built from and what it holds, written last when publishing.

`<root>/<id>/manifest.json` is the mark of a complete dataset: a directory without one (an
interrupted run) is not a dataset. It records the full data config, the dataset id, each source
file's sha256, every shard (relative path, rows, bytes, sha256), window counts per split, subject
and activity, the format version and the raylift version. `verify_dataset` re-hashes shards
against it; `list_datasets` finds the datasets under a root.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Optional

from preprocessing.store import storage
from preprocessing.errors import DataError
from preprocessing.store.storage import Location

MANIFEST_NAME = "manifest.json"
# Bump when the shard layout or the meaning of a column changes: it is part of every dataset id.
FORMAT_VERSION = 2  # 2: trajectory and image_size columns, shuffled training rows
STAGING_PREFIX = ".staging-"


def manifest_location(dataset: Location) -> Location:
    return dataset.child(MANIFEST_NAME)


def has_manifest(dataset: Location) -> bool:
    return storage.is_file(manifest_location(dataset))


def read_manifest_at(dataset: Location) -> dict:
    """Parse `<dataset>/manifest.json`; DataError naming the file if it is missing or not a manifest."""
    loc = manifest_location(dataset)
    if not storage.is_file(loc):
        raise DataError(f"no dataset at {dataset.uri} ({MANIFEST_NAME} not found)")
    raw = storage.read_bytes(loc)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{loc.uri}: not a JSON manifest ({e})") from None
    for key in ("id", "format_version", "shards", "splits"):
        if not isinstance(manifest, dict) or key not in manifest:
            raise DataError(f"{loc.uri}: not a raylift manifest (key {key!r} missing)")
    if manifest["format_version"] != FORMAT_VERSION:
        raise DataError(
            f"{loc.uri}: format version {manifest['format_version']} is not supported "
            f"(this raylift reads version {FORMAT_VERSION}; re-run `raylift preprocess`)"
        )
    return manifest


def write_manifest_at(dataset: Location, manifest: dict) -> None:
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    storage.write_bytes(manifest_location(dataset), text.encode("utf-8"))


def shard_paths(manifest: dict, split: str) -> list[str]:
    """Relative paths of a split's shards, in row order."""
    return [s["path"] for s in manifest["shards"] if s["split"] == split]


@dataclass
class VerifyReport:
    checked: int
    problems: list[str]  # one line per shard that is missing or differs

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_dataset(dataset: Location, progress: Optional[Callable[[str], None]] = None) -> VerifyReport:
    """Re-hash every shard listed in the manifest; report missing, resized or changed files, and
    Parquet files in the dataset that the manifest does not list."""
    manifest = read_manifest_at(dataset)
    problems: list[str] = []
    listed = set()
    for i, shard in enumerate(manifest["shards"]):
        rel = shard["path"]
        listed.add(rel)
        loc = dataset.child(rel)
        info = storage.file_info(loc)
        if info.type != storage.pafs.FileType.File:
            problems.append(f"{loc.uri}: missing")
        elif info.size != shard["bytes"]:
            problems.append(f"{loc.uri}: {info.size} bytes, manifest says {shard['bytes']}")
        else:
            digest = storage.sha256_of(loc)
            if digest != shard["sha256"]:
                problems.append(f"{loc.uri}: sha256 {digest[:16]}... differs from the manifest's {shard['sha256'][:16]}...")
        if progress:
            progress(f"checked {i + 1}/{len(manifest['shards'])} {rel}")
    for rel in storage.list_files(dataset):
        if rel.endswith(".parquet") and rel not in listed:
            problems.append(f"{dataset.child(rel).uri}: not listed in the manifest")
    return VerifyReport(checked=len(manifest["shards"]), problems=problems)


def list_datasets(root: Location) -> list[dict]:
    """Manifests of the complete datasets directly under `root` (staging and unfinished
    directories have no manifest and are skipped), sorted by creation time then id."""
    out = []
    for info in storage.list_dir(root):
        if info.type != storage.pafs.FileType.Directory or info.base_name.startswith("."):
            continue
        dataset = root.child(info.base_name)
        if not has_manifest(dataset):
            continue
        try:
            out.append(read_manifest_at(dataset))
        except DataError:
            continue  # an unreadable or foreign manifest is not one of our datasets
    return sorted(out, key=lambda m: (m.get("created", ""), m["id"]))
