"""`raylift evaluate --checkpoint D [--data ID|C] [--protocol P]`: score a checkpoint on a prepared
dataset with the field's protocols (`pipelines/evaluate/scoring.py`), the forward passes run as Ray
Data batch inference (`pipelines/evaluate/batch.py`), and write results.md/.json
(`pipelines/evaluate/results.py`). Image checkpoints (mpstr) go to `pipelines/evaluate/images2d.py`.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

from pipelines.evaluate import protocol_defs
from pipelines.evaluate.results import result_tables, run_labels, run_summary, write_results
from pipelines.evaluate.scoring import (
    TEST_COLUMNS, check_compatible, describe_arrays, describe_dataset, evaluate_arrays, load_train_for_baseline,
)
from preprocessing.errors import DataError
from preprocessing.store.dataset import Dataset, is_dataset_id
from pipelines.config import add_location_argument


def resolve_dataset(data: Optional[str], root: Optional[str], meta: dict[str, Any], progress=print) -> Dataset:
    """The dataset to score on: `data` = an experiment YAML (its data section is prepared, a cache
    hit costs nothing), a dataset's URI or path, or a dataset id under `root`; default the checkpoint's dataset_id under its
    config's data.root."""
    from models.checkpoint import CheckpointError
    from preprocessing.store import storage

    cfg_root = ((meta.get("config") or {}).get("data") or {}).get("root")
    if data is not None and (data.endswith((".yaml", ".yml")) or Path(data).is_file()):
        from pipelines.config import load_config
        from preprocessing.keypoints.dataset import prepare_dataset

        cfg = load_config(data)
        if root:
            cfg.data.root = root
        return prepare_dataset(cfg.data, progress=progress)
    if data is not None and not is_dataset_id(data):  # a dataset's URI or path
        return Dataset.open(data)
    dataset_id = data or meta.get("dataset_id")
    if not dataset_id:
        raise CheckpointError("checkpoint meta has no dataset_id: pass --data (a dataset id or experiment YAML)")
    uri = storage.join(root or cfg_root or "data/datasets", dataset_id)
    if "://" not in uri and not Path(uri).is_dir():
        raise DataError(f"dataset {dataset_id!r} not found at {uri} (pass --root or --data)")
    return Dataset.open(uri)


def evaluate_checkpoint(
    checkpoint: str,
    data: Optional[str] = None,
    root: Optional[str] = None,
    flip: bool = True,
    out: Optional[str] = None,
    batch_size: int = 64,
    device: str = "auto",
    baseline: bool = True,
    bf16: bool = False,
    resources: Optional[dict[str, float]] = None,
    actors: int = 1,
    progress=print,
    protocol: str = "raylift",
) -> dict[str, Any]:
    """Load `checkpoint`, resolve its dataset, check they fit, evaluate, write results.md/.json.

    The forward passes run as Ray Data batch inference (`pipelines/evaluate/batch.py`) on
    `device` / `resources` / `actors` (`batch.placement_for_cli`), on RAY_ADDRESS's cluster or a
    local Ray: a job driver on a GPU-less head never runs the model. The checkpoint is read and
    checked here and its weights shipped through the object store, so it may be a local path.
    """
    from models.checkpoint import load_model, read_meta
    from pipelines.evaluate.batch import ensure_ray, evaluate_on_ray, placement_for_cli, ship_model
    from preprocessing.keypoints.readers import load_split_arrays

    meta = read_meta(checkpoint)
    ensure_ray()  # before resolve_dataset, which may prepare a YAML's dataset with Ray Data
    dataset = resolve_dataset(data, root, meta, progress)
    described = describe_dataset(dataset)
    check_compatible(meta, described, checkpoint, dataset.uri)
    placement = placement_for_cli(device, resources, actors)
    model, meta = load_model(checkpoint)  # on this CPU: a damaged file fails here, naming it
    labels = run_labels(meta.get("config") or {}, f"given checkpoint (epoch {meta.get('epoch')})")
    if protocol == "raylift":
        result = evaluate_on_ray(ship_model(model, meta, checkpoint), dataset, placement, flip=flip,
                                 batch_size=batch_size, bf16=bf16, baseline=baseline, progress=progress,
                                 labels=labels, camera_inputs=tuple(getattr(model, "camera_inputs", ())))
    else:
        # A paper's protocol re-cuts whole test sequences into that paper's windows: the model runs
        # in this process, on its GPU when one is asked for and visible, else on its CPUs.
        import torch

        test = load_split_arrays(dataset, "test", columns=list(TEST_COLUMNS))
        check_compatible(meta, {**describe_arrays(test), "layout": dataset.layout}, checkpoint, dataset.uri)
        train, notes = load_train_for_baseline(dataset) if baseline else (None, [])
        torch_device = "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"
        result = evaluate_arrays(model, test, dataset.uri, dataset.layout, flip=flip, batch_size=batch_size,
                                 device=torch_device, train=train, bf16=bf16 and torch_device == "cuda",
                                 notes=notes, protocol=protocol, labels=labels)
    result = {"checkpoint": str(checkpoint), "model_name": meta["model"].get("name"), "epoch": meta.get("epoch"),
              "frames_T": int(meta["frames"]), **result}
    write_results(result, out or default_out_dir(checkpoint))
    return result


def default_out_dir(checkpoint: str) -> str:
    """`<checkpoint>-eval`, beside the checkpoint in the same storage (a local path or a URI)."""
    return checkpoint.rstrip("/") + "-eval"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_location_argument(parser, "--checkpoint", role="input", required=True, help="raylift checkpoint directory")
    add_location_argument(parser, "--data", role="dataset", default=None,
                        help="dataset URI, id under --root, or an experiment YAML whose data section is prepared "
                             "(default: the checkpoint's dataset)")
    add_location_argument(parser, "--root", role="input", default=None, help="datasets root (default: the checkpoint config's data.root)")
    parser.add_argument("--no-flip", action="store_true", help="disable test-time flip augmentation")
    parser.add_argument("--no-baseline", action="store_true", help="skip the mean-pose baseline")
    add_location_argument(parser, "--out", role="output", default=None, help="output directory for results.md/json (default: CHECKPOINT-eval)")
    parser.add_argument("--batch-size", type=int, default=64, help="windows per forward pass")
    from pipelines.evaluate.batch import add_placement_arguments

    add_placement_arguments(parser)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for the forward passes (CUDA only)")
    parser.add_argument("--protocol", default="raylift", choices=protocol_defs.PROTOCOL_NAMES,
                        help="what the tables reproduce (eval.protocol): raylift = each real frame once; mixste = "
                             "MixSTE's test windows; videopose3d_seq2frame = PoseFormer/CrossFormer; fusionformer")
    parser.add_argument("--compare", default=None, metavar="CHECKPOINT",
                        help="image models (mpstr): a second checkpoint, e.g. the no-relations baseline, "
                             "scored on the same images and shown beside --checkpoint (the paper's Table I)")


def run(args: argparse.Namespace) -> int:
    from pipelines.evaluate.images2d import is_image_checkpoint, run_cli
    from pipelines.evaluate.batch import parse_placement_resources
    from preprocessing.store import storage
    from preprocessing.store.storage import local_copy

    if not storage.is_s3(args.checkpoint) and is_image_checkpoint(args.checkpoint):
        return run_cli(args)  # images -> 2D: the 2D metrics (pipelines/evaluate/images2d.py)
    if args.compare:
        raise DataError(f"--compare: only for local image checkpoints (mpstr); {args.checkpoint} is not one")
    if storage.is_s3(args.checkpoint):  # an unreachable endpoint is named, not "no meta.json"
        storage.check_s3_endpoint(args.checkpoint)
    out = args.out or default_out_dir(args.checkpoint)
    with local_copy(args.checkpoint) as checkpoint:
        result = evaluate_checkpoint(
            checkpoint, data=args.data, root=args.root, flip=not args.no_flip, out=out,
            batch_size=args.batch_size, device=args.device, baseline=not args.no_baseline, bf16=args.bf16,
            protocol=args.protocol,
            resources=parse_placement_resources(args.resources), actors=args.actors,
        )
    print(f"{result['model_name']} on {result['dataset']} ({result['frames']} frames)")
    print(f"protocol: {result['protocol']}")
    print(run_summary(result))
    print(result_tables(result))
    for note in result["notes"]:
        print(f"note: {note}")
    where = storage.open_location(out).uri
    print(f"wrote {where}/results.md and {where}/results.json")
    return 0
