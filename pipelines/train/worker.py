"""The function every Ray Train worker runs (`train_loop_per_worker`): a thin Ray layer around
`pipelines.train.loop`.

Per worker: build the model, restore the latest checkpoint if there is one (Ray's after a
failure, else the run directory's on a restart), wrap in DDP (`prepare_model`: NCCL on GPUs, gloo
on CPUs), then per epoch train on the batches its task gives (`pipelines/train/tasks.py`: keypoint
windows or image crops), score the task's validation metric on this worker's share, and report
metrics with a checkpoint written by rank 0.
With `num_workers: 0` Ray runs this same function in the driver process ("local mode"), where
`ray.train.report` keeps nothing: checkpoints are then written to the run directory directly.
"""
from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
import time
from typing import Any, Optional

import pyarrow.fs as pafs
import torch

from cluster.console import Relay
from models.checkpoint import save_checkpoint
from preprocessing.store import storage
from preprocessing.store.storage import Location, local_copy
from pipelines.train.checkpoints import (
    SPARE_BYTES, checkpoint_name, disk_full, is_disk_full, prune, state_bytes, write_checkpoint,
)
from pipelines.train.schedules import after_epoch, before_step
from pipelines.train.tasks import TRAIN, steps_per_epoch
from pipelines.train.loop import (
    build_optimizer, build_scheduler, build_train_state, capture_rng_state, checkpoint_meta,
    current_lr, epoch_line, load_resume_state, restore_rng_state, seed_everything, train_step,
)



def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not _distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def _all_reduce_max(value: float, device: torch.device) -> float:
    if not _distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t.item())


def _reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for `_peak_memory_mb` (CUDA only: a process's peak RSS never resets)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: on CUDA the most torch allocated on `device` since `_reset_peak_memory`
    (the epoch's start); on CPU the process's peak resident set size over its whole life so far
    (`getrusage(RUSAGE_SELF).ru_maxrss`, kB on Linux), which includes Python, Ray and the data."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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


def _say(text: str, console: Any) -> None:
    """One line for the user: through the driver's relay (`console`, cluster/console.py), or on
    stdout in local mode, where this loop runs in the driver. Not `print`: Ray Train patches it
    into its logger."""
    if console is not None:
        Relay.say(console, text)
        return
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "driver"


def train_loop_per_worker(config: dict) -> None:
    """`config`: {"cfg": experiment dict, "task" (`pipelines/train/tasks.py`: the dataset handle,
    batches, validation and metric), "run_loc" (storage Location of the run directory),
    "resume_loc" (Location of the checkpoint to resume from, or None), "continued" (True when that
    checkpoint is another run's, whose `CONTINUE_MAY_CHANGE` values this config replaces), "local_mode" (bool),
    "local_callbacks", "console" (the driver's relay queue for the user's lines, None in local
    mode)}. The loop reports the task's metric (`val_mpjpe` in mm, `val_px` in
    pixels), lower is better, which is also the checkpoint score."""
    import ray.train
    import ray.train.torch

    from models.losses import build_loss, camera_kwargs, forward_for_loss
    from models.cost import frames_predicted, model_cost
    from models.registry import build_model
    from pipelines.config import config_from_dict
    from pipelines.train.logs import RunLog

    cfg_dict = config["cfg"]
    cfg = config_from_dict(cfg_dict)
    tc = cfg.train
    task = config["task"]
    dataset = task.dataset
    local_mode = bool(config["local_mode"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = _device(tc.use_gpu, local_mode)
    frames, joints = cfg.data.windows.frames, dataset.joints

    seed_everything(tc.seed)  # identical initial weights on every worker
    net = build_model(cfg.model, frames=frames, joints=joints).to(device)
    # {"macs_per_frame", "params"}, reported every epoch. Counted on the meta device: no compute, no
    # random draws, the weights untouched (models/cost.py); the same on every worker.
    cost = model_cost(net, frames, joints)
    predicted = frames_predicted(net, frames)  # per window: T (seq2seq) or 1 (seq2frame)
    optimizer = build_optimizer(net, tc)
    epoch_steps = steps_per_epoch(dataset, tc, frames, world)  # what per-step lr schedules count in
    scheduler = build_scheduler(optimizer, tc, epoch_steps)

    # Resume: Ray's checkpoint (restored after a worker failure, or from the run's snapshot on a
    # restart) first, else the latest complete checkpoint the driver found in the run directory.
    state: Optional[dict] = None
    ray_ckpt = None if local_mode else ray.train.get_checkpoint()
    if ray_ckpt is not None:
        with ray_ckpt.as_directory() as d:
            state = load_resume_state(d, net, optimizer, scheduler, cfg_dict, joints, dataset.id)
    elif config.get("resume_loc") is not None:  # "continued": another run's (a PBT donor's) checkpoint
        with local_copy(config["resume_loc"]) as d:
            state = load_resume_state(d, net, optimizer, scheduler, cfg_dict, joints, dataset.id,
                                      continued=bool(config.get("continued")))
    start = int(state["epoch"]) if state else 0
    history: list[dict] = list(state["history"]) if state else []
    if state and len(state["rng"]) == world:
        restore_rng_state(state["rng"][rank])
    else:
        seed_everything(tc.seed + 7919 * rank + 104729 * start)

    model = net if local_mode else ray.train.torch.prepare_model(net, move_to_device=False)
    if tc.compile:
        model = torch.compile(model)
    base_loss = build_loss(cfg.model.name, tc.loss, layout=dataset.layout)

    def loss_fn(m: torch.nn.Module, batch: dict):
        return base_loss(forward_for_loss(m, batch[task.input_key], camera_kwargs(m, batch)), batch)

    nodes = len(set(_all_gather(_node_id(), world)))
    log = RunLog(config["run_loc"]) if rank == 0 else None
    if rank == 0:
        where = "in the driver process" if local_mode else f"on {world} worker(s), {nodes} node(s)"
        what = f"resuming after epoch {start}" if state else "starting"
        _say(f"training {cfg.model.name} ({int(cost['params']):,} parameters, T={frames}) {where} "
             f"on {device.type}: {what}", config["console"])

    # This worker's part of Ray Train's split of the training split, where the task hands Ray one.
    shard = ray.train.get_dataset_shard(TRAIN) if task.uses_ray_split else None
    durations: list[float] = []
    try:
        for epoch in range(start + 1, tc.epochs + 1):
            t0 = time.perf_counter()
            _reset_peak_memory(device)
            model.train()
            loss_sum, steps, windows = 0.0, 0, 0
            term_sums: dict[str, float] = {}
            batches, epoch_cap = task.epoch_batches(epoch, rank, world, device, shard)
            for index, batch in enumerate(batches):
                before_step(scheduler, tc, (epoch - 1) * epoch_steps + index)  # per-step schedules: this step's lr
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

            err, count = _all_reduce_sum(list(task.validation_sums(net, rank, world, device)), device)
            score = err / count if count else float("nan")
            elapsed = time.perf_counter() - t0
            durations.append(elapsed)
            peak_mb = _all_reduce_max(_peak_memory_mb(device), device)  # the most any worker needed
            row = {
                "epoch": epoch,
                "loss": loss_sum / max(steps, 1),
                task.metric: score,  # the checkpoint score (mm, or px for image models), lower is better
                "lr": current_lr(optimizer),  # per-step schedules: the epoch's last step's
                "windows": int(windows),
                "windows_per_s": windows / max(train_time, 1e-9),
                "train_frames_per_s": windows * predicted / max(train_time, 1e-9),  # predicted frames
                "peak_memory_mb": peak_mb,  # `_peak_memory_mb`: CUDA this epoch's, CPU the process's
                **cost,
                "epoch_time_s": elapsed,
                "workers": world,
                "nodes": nodes,
                **terms_mean,
            }
            history.append(row)
            rng_states = _all_gather(capture_rng_state(), world)
            after_epoch(scheduler, tc)  # per-epoch decay, after the epoch's lr was recorded
            meta = checkpoint_meta(cfg_dict, epoch, dataset.id, joints, dataset.layout, row, task.metric)
            train_state = build_train_state(optimizer, scheduler, epoch, rng_states, history)
            _report(row, net, meta, train_state, rank, config["run_loc"], local_mode, tc.keep_best,
                    config.get("local_callbacks") or [])
            if rank == 0:  # logged only once the epoch's checkpoint is committed
                eta = (tc.epochs - epoch) * sum(durations) / len(durations)
                _say(epoch_line(row, tc.epochs, eta), config["console"])
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
            free = shutil.disk_usage(os.path.dirname(target.path)).free
            if free < needed + SPARE_BYTES:
                raise disk_full(target, needed, epoch, free)
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
