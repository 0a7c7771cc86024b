"""Staged datasets: training on a cluster that has the Parquet windows but not the source files.

A dataset's id hashes its source files, so a machine without them cannot compute it. The user
prepares the dataset once where the sources are, into the cluster's storage (`raylift preprocess
--config C --set data.root=s3://bucket/datasets`; for a tune config, every data.* variant of its
search space). A train or tune run on the cluster with the same config and `data.root` then finds
it by its *content*: the published manifest whose data config, without locations, equals the run's
(`content_config` plus the kind's own fields). Exactly one such dataset is used, and the run says so.
None or several are an error that names the missing source file and the way out.
"""
from __future__ import annotations

from typing import Callable

from preprocessing.config import DataConfig
from preprocessing.errors import DataError
from preprocessing.schema import ConfigError, parse_dataclass
from preprocessing.store import storage
from preprocessing.store.dataset import Dataset
from preprocessing.store.manifest import list_datasets
from preprocessing.store.writer import LOCATION_FIELDS

Progress = Callable[[str], None]


def missing_sources(data: DataConfig) -> list[str]:
    """`data.source.<key>=<path>` for each source location that is set and does not exist here."""
    missing = []
    for key in LOCATION_FIELDS:
        path = getattr(data.source, key)
        if path and not storage.exists(storage.open_location(path)):
            missing.append(f"data.source.{key}={path}")
    return missing


def find_staged(data: DataConfig, content_of: Callable[[DataConfig], dict], missing: list[str],
                progress: Progress) -> Dataset:
    """The one dataset under `data.root` whose content config (`content_of`) equals `data`'s; a
    DataError naming the first missing source when there is none, or listing them when several
    (built from different source files) match."""
    root = storage.open_location(data.root)
    want = content_of(data)
    matches = []
    for manifest in list_datasets(root) if storage.exists(root) else []:
        try:
            built = parse_dataclass(DataConfig, manifest.get("config"), "data")
        except ConfigError:
            continue  # a manifest of another raylift version's config: not comparable
        if content_of(built) == want:
            matches.append(Dataset(root.child(manifest["id"]), manifest, cached=True))
    how = (f"prepare it where the source files are, into this storage: raylift preprocess --config "
           f"<this config> --set data.root={root.uri}")
    if not matches:
        raise DataError(f"{missing[0]}: not found, and {root.uri} holds no dataset built from this "
                        f"data config; {how}")
    if len(matches) > 1:
        raise DataError(f"{missing[0]}: not found, and {len(matches)} datasets in {root.uri} were built from "
                        f"this data config with different source files ({', '.join(d.id for d in matches)}): "
                        "name one with --data or data.dataset")
    (dataset,) = matches
    progress(f"source files not on this machine ({missing[0]}{', ...' if len(missing) > 1 else ''}): "
             f"using dataset {dataset.id} at {dataset.uri}, built from this data config "
             f"on {dataset.manifest.get('created', '?')}")
    return dataset
