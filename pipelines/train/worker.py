"""The function every Ray Train worker runs (`train_loop_per_worker`): a thin Ray layer around
`pipelines.train.loop`.

Per worker: build the model, restore the latest checkpoint if there is one (Ray's after a
failure, else the run directory's on a restart), wrap in DDP (`prepare_model`: NCCL on GPUs, gloo
on CPUs), then per epoch train on this worker's shard of the Parquet windows, score validation
MPJPE on a share of the test split's row groups, and report metrics with a checkpoint written by rank 0.
With `num_workers: 0` Ray runs this same function in the driver process ("local mode"), where
`ray.train.report` keeps nothing: checkpoints are then written to the run directory directly.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from typing import Any, Optional

import pyarrow.fs as pafs
import numpy as np
import torch

from models.checkpoint import save_checkpoint
from preprocessing import storage
from preprocessing.storage import Location
from pipelines.train.data import batch_seed, buffer_windows, global_share, iter_val_batches
from pipelines.train.checkpoints import (
    checkpoint_name, disk_full, is_disk_full, local_copy, prune, state_bytes, write_checkpoint,
)
from pipelines.train.loop import (
    build_optimizer, build_scheduler, build_train_state, capture_rng_state, checkpoint_meta,
    current_lr, epoch_line, load_resume_state, restore_rng_state, seed_everything, train_step,
    validation_sums,
)

TRAIN = "train"


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not _distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def _all_gather(obj: Any, world: int) -> list[Any]:
    if not _distributed():
        return [obj]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def _device(use_gpu: bool, local_mode: bool) -> torch.device:
    import ray.train.torch

    if not use_gpu or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", 0) if local_mode else ray.train.torch.get_device()


def _say(text: str) -> None:
    """One line on the worker's stdout (shown by the driver). Not `print`: Ray Train patches it
    into its logger, which echoes every line twice on the driver."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "driver"


def train_loop_per_worker(config: dict) -> None:
    """`config`: {"cfg": experiment dict, "dataset_loc" / "run_loc" (storage Locations of the
    dataset and the run directory), "dataset_id", "joints", "layout", "resume_loc" (Location of
    the checkpoint to resume from, or None), "local_mode" (bool), "local_callbacks",
    "window_bytes" and "train_windows" (a decoded training window's bytes and the train split's
    windows, which size the shuffle buffer), and for image models "images": {"size", "flip"} of
    the image dataset}.

    Image models (`input_kind = "images"`, pipelines/train/images.py) read image windows, train
    on their 2D keypoints and are validated by the mean 2D error in full-image pixels (`val_px`,
    also reported as the checkpoint score `val_mpjpe`, lower is better)."""
    import ray.train
    import ray.train.torch

    from models.losses import build_loss, camera_kwargs, forward_for_loss
    from models.registry import build_model, count_parameters
    from pipelines.config import config_from_dict
    from pipelines.train import images as img
    from pipelines.train.logs import RunLog
    from preprocessing.image_readers import iter_image_groups
    from preprocessing.readers import iter_torch_batches, split_row_groups
    from preprocessing.skeleton import get_skeleton

    cfg_dict = config["cfg"]
    cfg = config_from_dict(cfg_dict)
    tc = cfg.train
    local_mode = bool(config["local_mode"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = _device(tc.use_gpu, local_mode)
    frames, joints = cfg.data.windows.frames, int(config["joints"])

    seed_everything(tc.seed)  # identical initial weights on every worker
    net = build_model(cfg.model, frames=frames, joints=joints).to(device)
    optimizer = build_optimizer(net, tc)
    scheduler = build_scheduler(optimizer, tc)

    # Resume: Ray's checkpoint (restored after a worker failure, or from the run's snapshot on a
    # restart) first, else the latest complete checkpoint the driver found in the run directory.
    state: Optional[dict] = None
    ray_ckpt = None if local_mode else ray.train.get_checkpoint()
    if ray_ckpt is not None:
        with ray_ckpt.as_directory() as d:
            state = load_resume_state(d, net, optimizer, scheduler, cfg_dict, joints, config["dataset_id"])
    elif config.get("resume_loc") is not None:
        with local_copy(config["resume_loc"]) as d:
            state = load_resume_state(d, net, optimizer, scheduler, cfg_dict, joints, config["dataset_id"])
    start = int(state["epoch"]) if state else 0
    history: list[dict] = list(state["history"]) if state else []
    if state and len(state["rng"]) == world:
        restore_rng_state(state["rng"][rank])
    else:
        seed_everything(tc.seed + 7919 * rank + 104729 * start)

    model = net if local_mode else ray.train.torch.prepare_model(net, move_to_device=False)
    if tc.compile:
        model = torch.compile(model)
    base_loss = build_loss(cfg.model.name, tc.loss, layout=config["layout"])

    image_model = img.is_image_model(type(net))
    input_key = img.IMAGE_INPUT if image_model else "keypoints_2d"
    image_info = config.get("images") or {}
    flip_perm = get_skeleton(config["layout"]).flip_permutation() if image_model else None

    def loss_fn(m: torch.nn.Module, batch: dict):
        return base_loss(forward_for_loss(m, batch[input_key], camera_kwargs(m, batch)), batch)

    nodes = len(set(_all_gather(_node_id(), world)))
    log = RunLog(config["run_loc"]) if rank == 0 else None
    if rank == 0:
        where = "in the driver process" if local_mode else f"on {world} worker(s), {nodes} node(s)"
        what = f"resuming after epoch {start}" if state else "starting"
        _say(f"training {cfg.model.name} ({count_parameters(net):,} parameters, T={frames}) {where} "
             f"on {device.type}: {what}")

    if tc.shuffle == "global" and not image_model:  # its share of a per-epoch permutation of row groups
        group_rows = split_row_groups(config["dataset_loc"], "train")
    else:  # manifest order, split across workers by Ray Train
        train_shard = ray.train.get_dataset_shard(TRAIN)
    cap = None if tc.max_windows_per_epoch is None else -(-tc.max_windows_per_epoch // world)
    durations: list[float] = []
    try:
        for epoch in range(start + 1, tc.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            loss_sum, steps, windows = 0.0, 0, 0
            term_sums: dict[str, float] = {}
            seed = batch_seed(tc.seed, epoch, rank)
            if image_model:
                epoch_cap = cap
                buffer = buffer_windows(tc.shuffle_buffer, tc.shuffle_buffer_mb, config["window_bytes"],
                                        -(-config["train_windows"] // world))
                flip_rng = np.random.default_rng(seed) if image_info.get("flip") else None
                batches = (img.training_batch(b, flip_rng is not None, flip_rng, int(image_info["size"]), flip_perm, device)
                           for b in img.iter_numpy_batches(train_shard, tc.windows_per_batch(frames),
                                                           tc.prefetch_batches, buffer, seed))
            else:
                if tc.shuffle == "local":
                    source, share, epoch_cap = train_shard, -(-config["train_windows"] // world), cap
                else:
                    source, share, per_worker = global_share(config["dataset_loc"], group_rows, tc.seed, epoch, rank,
                                                             world)
                    epoch_cap = per_worker if cap is None else min(cap, per_worker)
                batches = iter_torch_batches(
                    source, tc.windows_per_batch(frames),
                    shuffle_buffer=buffer_windows(tc.shuffle_buffer, tc.shuffle_buffer_mb, config["window_bytes"], share),
                    prefetch_batches=tc.prefetch_batches, seed=seed, device=str(device),
                )
            for batch in batches:
                loss, terms = train_step(model, batch, loss_fn, optimizer, tc.clip_grad, tc.precision == "bf16")
                loss_sum += loss
                steps += 1
                windows += int(batch["keypoints_2d"].shape[0])
                for k, v in terms.items():
                    term_sums[k] = term_sums.get(k, 0.0) + float(v)
                if epoch_cap is not None and windows >= epoch_cap:
                    break
            train_time = time.perf_counter() - t0
            term_keys = sorted(term_sums)
            reduced = _all_reduce_sum([loss_sum, steps, windows] + [term_sums[k] for k in term_keys], device)
            loss_sum, steps, windows = reduced[0], reduced[1], reduced[2]
            terms_mean = {f"train_{k}": v / max(steps, 1) for k, v in zip(term_keys, reduced[3:]) if k != "loss"}

            val_cap = None if tc.max_val_windows is None else -(-tc.max_val_windows // world)
            if image_model:
                groups = iter_image_groups(config["dataset_loc"], "test", rank, world, val_cap)
                err, count = img.validation_sums_2d(net, groups, int(image_info["size"]), tc.val_batch_size, device,
                                                    cfg.eval.bf16)
            else:
                val_batches = iter_val_batches(config["dataset_loc"], config.get("val_split", "test"),
                                               tc.val_batch_size, rank, world, val_cap)
                err, count = validation_sums(net, val_batches, device, cfg.eval.bf16)
            err, count = _all_reduce_sum([err, count], device)
            score = (err if image_model else 1000.0 * err) / count if count else float("nan")
            elapsed = time.perf_counter() - t0
            durations.append(elapsed)
            row = {
                "epoch": epoch,
                "loss": loss_sum / max(steps, 1),
                "val_mpjpe": score,  # the checkpoint score: mm, or for image models the 2D error in px
                **({"val_px": score} if image_model else {}),
                "lr": current_lr(optimizer),
                "windows": int(windows),
                "windows_per_s": windows / max(train_time, 1e-9),
                "epoch_time_s": elapsed,
                "workers": world,
                "nodes": nodes,
                **terms_mean,
            }
            history.append(row)
            rng_states = _all_gather(capture_rng_state(), world)
            scheduler.step()  # per-epoch decay, after the epoch's lr was recorded
            meta = checkpoint_meta(cfg_dict, epoch, config["dataset_id"], joints, config["layout"], row)
            train_state = build_train_state(optimizer, scheduler, epoch, rng_states, history)
            _report(row, net, meta, train_state, rank, config["run_loc"], local_mode, tc.keep_best,
                    config.get("local_callbacks") or [])
            if rank == 0:  # logged only once the epoch's checkpoint is committed
                eta = (tc.epochs - epoch) * sum(durations) / len(durations)
                _say(epoch_line(row, tc.epochs, eta))
                log.write(history)
    finally:
        if log is not None:
            log.close()


def _report(row: dict, net: torch.nn.Module, meta: dict, train_state: dict, rank: int, run_uri: Location,
            local_mode: bool, keep_best: int, local_callbacks: list) -> None:
    """Persist this epoch's checkpoint (rank 0) and report its metrics (every worker: a barrier)."""
    import ray.train

    metrics = {k: float(v) for k, v in row.items()}
    if rank != 0:
        ray.train.report(metrics)
        return
    epoch = int(row["epoch"])
    if local_mode:  # Ray keeps nothing in local mode: write and prune the run directory here
        write_checkpoint(run_uri, epoch, net.state_dict(), meta, train_state)
        prune(run_uri, keep_best)
        ray.train.report(metrics)
        for callback in local_callbacks:  # e.g. Tune's TuneReportCallback (same process here)
            callback.after_report(None, [metrics], None)
        return
    # Ray Train copies the directory into the run directory file by file (not atomically): check
    # the space first, and remove a partial copy if the disk fills up anyway.
    target = run_uri.child(checkpoint_name(epoch))
    tmp = tempfile.mkdtemp(prefix="raylift-ckpt-")
    try:
        try:
            directory = save_checkpoint(os.path.join(tmp, checkpoint_name(epoch)), net.state_dict(), meta, train_state)
        except OSError as e:
            if is_disk_full(e):
                raise disk_full(storage.open_location(tmp), state_bytes(net.state_dict()) + state_bytes(train_state),
                                epoch) from None
            raise
        needed = sum(f.stat().st_size for f in directory.iterdir())
        if isinstance(target.fs, pafs.LocalFileSystem):
            os.makedirs(os.path.dirname(target.path), exist_ok=True)
            if shutil.disk_usage(os.path.dirname(target.path)).free < needed + (1 << 20):
                raise disk_full(target, needed, epoch)
        try:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(directory)),
                             checkpoint_dir_name=checkpoint_name(epoch))
        except OSError as e:
            if is_disk_full(e):
                storage.delete_tree(target)
                raise disk_full(target, needed, epoch) from None
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
