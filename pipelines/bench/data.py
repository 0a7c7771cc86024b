"""`raylift bench data`: preprocessing and read-back throughput on this machine.

Generates an H36M-scale synthetic dataset (7 subjects × 30 actions × 2,500 frames × 4 cameras =
2.1M camera-frames at `--scale 1`; `--scale` shrinks the number of actions), then for each window
length (default T=243 and T=27, seq2seq, flip on) builds the Parquet shards with Ray Data and
reads the training split back through `iter_torch_batches` (the Ray Train input path). Reports
windows/s, bytes per window and read-back windows/s. Figures, never pass/fail.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

H36M_ACTIONS = 30
H36M_FRAMES = 2500
SUBJECTS = ["S1", "S5", "S6", "S7", "S8", "S9", "S11"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of H36M's size (actions per subject = round(30 * scale), at least 1)")
    parser.add_argument("--frames", type=int, nargs="+", default=[243, 27], help="window lengths T (seq2seq)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--batch-size", type=int, default=64, help="read-back batch size (windows)")
    parser.add_argument("--shuffle-buffer", type=int, default=256, help="read-back local shuffle buffer (windows)")
    parser.add_argument("--shuffle", choices=["global", "local"], default="global",
                        help="read-back order: global = a seeded permutation of all row groups (train.shuffle "
                             "global), local = manifest order (both with the local shuffle buffer)")
    parser.add_argument("--rows-per-shard", type=int, default=None, help="override data.rows_per_shard")
    parser.add_argument("--workdir", default=None, help="where to write (default: a temporary directory, removed afterwards)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data and shards")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")


def bench_config(scale: float, frames: int, out_dir: str, root: str, rows_per_shard: int | None):
    from preprocessing.config import DataConfig, SourceConfig, SyntheticConfig, WindowConfig

    synthetic = SyntheticConfig(
        subjects=list(SUBJECTS), actions_per_subject=max(1, round(H36M_ACTIONS * scale)),
        frames_per_action=H36M_FRAMES, noise_px=0.0, seed=0, out_dir=out_dir,
    )
    data = DataConfig(
        source=SourceConfig(kind="synthetic", synthetic=synthetic),
        windows=WindowConfig(mode="seq2seq", frames=frames, flip=True), root=root,
    )
    if rows_per_shard:
        data.rows_per_shard = rows_per_shard
    data.validate()
    return data


def tree_cpu_seconds() -> float:
    """CPU seconds used so far by this process and its live descendants (the local Ray it started),
    from /proc (Linux). On a shared machine wall-clock throughput depends on everyone else's load;
    CPU time per window does not, so the bench reports both."""
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent pid, cpu seconds)
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [os.getpid()]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0.0))[1]
        todo.extend(children.get(pid, []))
    return total


def read_back(dataset, batch_size: int, shuffle_buffer: int, shuffle: str = "global") -> tuple[int, float]:
    """Iterate the training split once as torch batches, in the order `train.shuffle` would read
    it (one worker, epoch 1); (windows, seconds)."""
    from pipelines.train.data import epoch_shares
    from preprocessing.keypoints.readers import iter_torch_batches, open_split, split_row_groups

    t0 = time.monotonic()
    groups = epoch_shares(split_row_groups(dataset, "train"), 0, 1, 1)[0][0] if shuffle == "global" else None
    ds = open_split(dataset, "train", groups=groups)
    windows = 0
    for batch in iter_torch_batches(ds, batch_size, shuffle_buffer=shuffle_buffer, seed=0):
        windows += int(batch["keypoints_2d"].shape[0])
    return windows, time.monotonic() - t0


def run(args: argparse.Namespace) -> int:
    import ray

    from cluster.session import quiet_ray_data
    from preprocessing.keypoints.dataset import build_dataset, hash_files
    from preprocessing.sources import load_sequences

    quiet_ray_data()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="raylift-bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"scale": args.scale, "cpus": args.cpus, "shuffle": args.shuffle, "runs": []}
    try:
        t0 = time.monotonic()
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        results["ray_start_s"] = round(time.monotonic() - t0, 2)
        for frames in args.frames:
            data = bench_config(args.scale, frames, str(work / "synthetic"), str(work / "datasets"), args.rows_per_shard)
            t0 = time.monotonic()
            source = load_sequences(data.source)
            load_s = time.monotonic() - t0
            camera_frames = sum(s.num_frames for s in source.sequences)
            t0 = time.monotonic()
            files = hash_files(source.files)
            hash_s = time.monotonic() - t0
            print(f"T={frames}: source {len(source.sequences)} sequences, {camera_frames} camera-frames "
                  f"(generate/load {load_s:.1f} s, hash {hash_s:.1f} s)", flush=True)
            cpu0, t0 = tree_cpu_seconds(), time.monotonic()
            info = build_dataset(data, source.sequences, source.skeleton, files, progress=lambda _m: None)
            build_s, build_cpu = time.monotonic() - t0, tree_cpu_seconds() - cpu0
            m = info.manifest
            windows = sum(c["windows"] for c in m["splits"].values())
            cpu0 = tree_cpu_seconds()
            read_windows, read_s = read_back(info, args.batch_size, args.shuffle_buffer, args.shuffle)
            read_cpu = tree_cpu_seconds() - cpu0
            run = {
                "frames": frames,
                "camera_frames": camera_frames,
                "windows": windows,
                "train_windows": m["splits"]["train"]["windows"],
                "shards": len(m["shards"]),
                "bytes": m["total_bytes"],
                "bytes_per_window": round(m["total_bytes"] / windows),
                "load_s": round(load_s, 2),
                "hash_s": round(hash_s, 2),
                "build_s": round(build_s, 2),
                "windows_per_s": round(windows / build_s),
                "build_cpu_s": round(build_cpu, 2),
                "windows_per_cpu_s": round(windows / build_cpu),
                "end_to_end_s": round(load_s + hash_s + build_s, 2),
                "read_windows": read_windows,
                "read_s": round(read_s, 2),
                "read_windows_per_s": round(read_windows / read_s),
                "read_cpu_s": round(read_cpu, 2),
                "read_windows_per_cpu_s": round(read_windows / read_cpu),
                "load_average": round(os.getloadavg()[0], 1),
            }
            results["runs"].append(run)
            print(f"  preprocess {windows} windows ({run['shards']} shards, {run['bytes'] / 1e6:.0f} MB) in "
                  f"{build_s:.1f} s = {run['windows_per_s']} windows/s; {run['bytes_per_window']} bytes/window; "
                  f"end to end {run['end_to_end_s']:.1f} s; {build_cpu:.1f} CPU-s = {run['windows_per_cpu_s']} windows/CPU-s",
                  flush=True)
            print(f"  read-back  {read_windows} training windows in {read_s:.1f} s = "
                  f"{run['read_windows_per_s']} windows/s (batch {args.batch_size}, shuffle buffer {args.shuffle_buffer}); "
                  f"{read_cpu:.1f} CPU-s = {run['read_windows_per_cpu_s']} windows/CPU-s; load average {run['load_average']}",
                  flush=True)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nbench data (scale {args.scale}, {args.cpus} CPUs, Ray start {results['ray_start_s']} s)")
    from pipelines.viz.tables import render_table

    keys = ("frames", "camera_frames", "windows", "build_s", "windows_per_s", "windows_per_cpu_s", "bytes_per_window",
            "read_windows_per_s", "read_windows_per_cpu_s")
    print(render_table(["T", "camera-frames", "windows", "build s", "windows/s", "win/CPU-s", "B/window", "read win/s",
                        "read win/CPU-s"], [[r[k] for k in keys] for r in results["runs"]], left=0))
    print("(win/CPU-s: windows per CPU-second of this process tree, independent of other load on the machine)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0
