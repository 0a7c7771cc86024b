"""`raylift data {ls,verify,show}`: the preprocessed datasets under a root (local or s3://).

- `ls`: every complete dataset (one with a manifest; staging and interrupted directories are
  skipped): id, source kind, mode, T, windows, size, creation date.
- `verify ID`: re-hash every shard against the manifest; names each missing or changed file and
  exits 1 if any.
- `show ID`: the manifest in a readable form (source files, windows, columns, counts per split,
  subject and activity).
`--root` defaults to `--config`'s data.root, else `data/datasets`. ID may also be a dataset's
full path or URI.
"""
from __future__ import annotations

import argparse

from pipelines.config import add_config_arguments, add_location_argument

DEFAULT_ROOT = "data/datasets"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    for name, help_text in (
        ("ls", "list the datasets under the root"),
        ("verify", "re-hash a dataset's shards against its manifest (exit 1 if any differ)"),
        ("show", "print a dataset's manifest summary"),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name != "ls":
            add_location_argument(p, "dataset", role="dataset", metavar="ID", help="dataset id (or the dataset's path/URI)")
        add_location_argument(p, "--root", role="input", default=None, help=f"datasets root, local or s3:// (default: --config's data.root, else {DEFAULT_ROOT})")
        add_config_arguments(p, required=False, sections=())


def resolve_root(args: argparse.Namespace) -> str:
    if args.root:
        return args.root
    if args.config:
        from pipelines.config import load_config

        return load_config(args.config, args.overrides).data.root
    return DEFAULT_ROOT


def dataset_location(args: argparse.Namespace):
    from preprocessing.store import storage

    ref = args.dataset
    if "/" in ref or ref.startswith("."):
        return storage.open_location(ref)
    return storage.open_location(resolve_root(args)).child(ref)


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def cmd_ls(args: argparse.Namespace) -> int:
    from preprocessing.store import storage
    from preprocessing.store.manifest import list_datasets

    root = storage.open_location(resolve_root(args))
    manifests = list_datasets(root)
    if not manifests:
        print(f"no datasets under {root.uri}")
        return 0
    from pipelines.viz.tables import render_table

    rows = []
    for m in manifests:
        w, s = m["windows"], m["splits"]
        images = m.get("kind") == "images"
        views = w["views"] if images else len(w["cameras"]) if w["multiview"] else 1
        rows.append([m["id"], m["source"]["kind"], "images" if images else w["mode"], w["frames"], views,
                     s.get("train", {}).get("windows", 0), s.get("test", {}).get("windows", 0),
                     _size(m["total_bytes"]), m.get("created", "?")])
    print(f"datasets under {root.uri}:")
    print(render_table(["ID", "SOURCE", "MODE", "T", "VIEWS", "TRAIN", "TEST", "SIZE", "CREATED"], rows, left=3))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from preprocessing.store.manifest import verify_dataset

    dataset = dataset_location(args)
    report = verify_dataset(dataset)
    for problem in report.problems:
        print(f"BAD  {problem}")
    if report.ok:
        print(f"OK   {dataset.uri}: {report.checked} shards match the manifest")
        return 0
    print(f"FAILED {dataset.uri}: {len(report.problems)} problem(s) in {report.checked} shards")
    return 1


def cmd_show(args: argparse.Namespace) -> int:
    from preprocessing.store.dataset import Dataset

    dataset = Dataset.open(dataset_location(args))
    m = dataset.manifest
    if dataset.kind == "images":
        from pipelines.data.preprocess import image_summary_lines

        for line in image_summary_lines(Dataset(dataset.location, m, cached=True), 0.0)[:-1]:
            print(line)
        return 0
    w, src = m["windows"], m["source"]
    print(f"dataset    {m['id']}")
    print(f"uri        {dataset.uri}")
    print(f"created    {m.get('created', '?')} by raylift {m.get('raylift_version', '?')} (format {m['format_version']}, build {m.get('build_seconds', 0):.1f} s)")
    print(f"source     {src['kind']}, layout {src['layout']}, {src['joints']} joints")
    for f in src["files"]:
        print(f"  file     {f['path']}  sha256 {f['sha256'][:16]}...  {_size(f['bytes'])}")
    print(f"windows    {w['mode']}, T={w['frames']}, stride {w['stride']}, flip {str(w['flip']).lower()}, "
          f"cameras {','.join(w['cameras'])}" + (" (multi-view rows)" if w["multiview"] else ""))
    print("columns    " + ", ".join(f"{k} {tuple(v)}" for k, v in m["columns"].items()))
    print(f"shards     {len(m['shards'])} files, {_size(m['total_bytes'])}, {m['rows_per_shard']} rows per shard, "
          f"{m['rows_per_group']} per row group")
    for split, c in sorted(m["splits"].items(), key=lambda kv: kv[0] != "train"):
        print(f"{split:<10} {c['windows']} windows ({c['flipped']} flipped) from {c['sources']} sequences, "
              f"{c['masked_frames']} real frames, {c['shards']} shards, {_size(c['bytes'])}")
        print("  subjects   " + ", ".join(f"{k} {v}" for k, v in sorted(c["subjects"].items())))
        print("  activities " + ", ".join(f"{k} {v}" for k, v in sorted(c["activities"].items())))
    return 0


def run(args: argparse.Namespace) -> int:
    return {"ls": cmd_ls, "verify": cmd_verify, "show": cmd_show}[args.data_command](args)
