"""`raylift bench images`: person-crop preprocessing throughput on this machine.

1. Renders the synthetic motion as Human3.6M-layout MP4 files (`--scale` of the cameras'
   1000 px resolution; H.264 via PyAV) — setup, timed but not the figure of interest.
2. In this process (one core): decodes those videos, crops every person and encodes the crops
   (`h36m_video` source), and separately renders synthetic crops directly (`synthetic_images`):
   images per CPU-second.
3. Builds the `h36m_video` dataset with Ray Data (`--cpus` CPUs): wall-clock images/s, images per
   CPU-second of the whole process tree (Ray workers included), and bytes per stored image.
4. With `--model-config C`: training steps of C's image model (e.g. the two-stage demo's) on this
   CPU, images per second (forward, backward, optimiser step; random crops of its size).
Figures, never pass/fail.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--subjects", type=int, default=2, help="synthetic subjects (half train, half test)")
    parser.add_argument("--frames", type=int, default=64, help="frames per (subject, action)")
    parser.add_argument("--scale", type=float, default=0.5, help="video resolution as a fraction of the cameras' (1000 px)")
    parser.add_argument("--size", type=int, default=64, help="crop size (images.size)")
    parser.add_argument("--format", choices=["jpeg", "png"], default="jpeg")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--workdir", default=None, help="where to write (default: a temporary directory, removed afterwards)")
    parser.add_argument("--model-config", default=None,
                        help="also time training steps of this image experiment's (or two-stage config's stage-1) "
                             "model on random crops of its size: images/s on this CPU")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps (--model-config; after 2 warm-up)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")


def _configs(args: argparse.Namespace, work: Path):
    from preprocessing.config import DataConfig, ImagesConfig, SourceConfig, SyntheticConfig
    from preprocessing.sources.synthetic import ensure_synthetic

    subjects = [f"S{i + 1}" for i in range(max(2, args.subjects))]
    syn = SyntheticConfig(subjects=subjects, actions_per_subject=1, frames_per_action=args.frames,
                          out_dir=str(work / "synthetic"))
    half = len(subjects) // 2
    split = {"train_subjects": subjects[:half], "test_subjects": subjects[half:]}
    images = ImagesConfig(size=args.size, format=args.format, frames=8)
    synthetic = DataConfig(source=SourceConfig(kind="synthetic_images", synthetic=syn, **split), images=images,
                           root=str(work / "datasets"))
    files = ensure_synthetic(syn)
    video = DataConfig(source=SourceConfig(kind="h36m_video", data_3d=files.data_3d, data_2d=files.data_2d,
                                           cameras=files.cameras, videos=str(work / "videos"), **split),
                       images=images, root=str(work / "datasets"))
    return synthetic, video


def _crop_rate(data) -> tuple[int, float]:
    """Crop every image of `data`'s source in this process: (images, CPU seconds)."""
    from preprocessing.images.dataset import ImageJob, crop_views
    from preprocessing.images.sources import load_image_sequences
    sequences = load_image_sequences(data).sequences
    job = ImageJob(data.source.kind, data.images, 0)
    images, cpu0 = 0, time.process_time()
    for seq in sequences:
        for view in range(len(seq.cameras)):
            images += len(crop_views(seq, view, 0, seq.num_frames, job)[0])
    return images, time.process_time() - cpu0


def image_experiment(path: str):
    """The image experiment of `path`: an experiment YAML, or a two-stage YAML's `stages.images`."""
    from pipelines.config import config_from_dict
    from preprocessing.schema import load_yaml

    raw = load_yaml(path)
    return config_from_dict(raw["stages"]["images"] if "stages" in raw else raw)


def train_rate(cfg, steps: int, warmup: int = 2) -> dict:
    """Training steps of `cfg`'s image model on this CPU (random crops and labels of the config's
    sizes, the model's loss, the config's optimiser and clipping): images per second, after
    `warmup` untimed steps; data loading excluded (the decode rate is measured above)."""
    import torch

    from models.losses import build_loss, forward_for_loss
    from models.registry import build_model, count_parameters
    from pipelines.train.loop import build_optimizer, train_step

    images = cfg.data.images
    b, f, v, size = cfg.train.batch_size, images.frames, images.views, images.size
    model = build_model(cfg.model, frames=f, joints=17).train()
    optimizer = build_optimizer(model, cfg.train)
    base = build_loss(cfg.model.name, cfg.train.loss)
    generator = torch.Generator().manual_seed(0)
    batch = {"images": torch.rand(b, f, v, 3, size, size, generator=generator),
             "keypoints_2d": torch.rand(b, f, v, 17, 2, generator=generator) * size, "mask": torch.ones(b, f)}

    def loss_fn(m, x):
        return base(forward_for_loss(m, x["images"]), x)

    for _ in range(warmup):
        train_step(model, batch, loss_fn, optimizer, cfg.train.clip_grad)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(model, batch, loss_fn, optimizer, cfg.train.clip_grad)
    per_step = (time.perf_counter() - t0) / steps
    return {"model": cfg.model.name, "parameters": count_parameters(model), "images_per_step": b * f * v,
            "crop_size": size, "threads": torch.get_num_threads(), "step_s": round(per_step, 4),
            "train_images_per_s": round(b * f * v / per_step, 1)}


def run(args: argparse.Namespace) -> int:
    import ray

    from cluster.session import quiet_ray_data
    from pipelines.bench.data import tree_cpu_seconds
    from preprocessing.images.dataset import build_image_dataset
    from preprocessing.images.sources import write_synthetic_videos

    quiet_ray_data()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="raylift-bench-images-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"subjects": args.subjects, "frames": args.frames, "scale": args.scale, "size": args.size,
                     "format": args.format, "cpus": args.cpus}
    try:
        synthetic, video = _configs(args, work)
        t0 = time.monotonic()
        videos = write_synthetic_videos(synthetic, str(work / "videos"), scale=args.scale)
        results["render_videos_s"] = round(time.monotonic() - t0, 2)
        results["videos"] = len(videos)
        print(f"rendered {len(videos)} MP4 files at {args.scale:g} x 1000 px in {results['render_videos_s']} s", flush=True)

        n, cpu = _crop_rate(video)
        results["video_decode_crop_images_per_cpu_s"] = round(n / cpu, 1)
        print(f"decode + crop + encode ({args.size} px {args.format}) from MP4: {n} images in {cpu:.2f} CPU-s = "
              f"{n / cpu:.1f} images/s per core", flush=True)
        n, cpu = _crop_rate(synthetic)
        results["synthetic_render_images_per_cpu_s"] = round(n / cpu, 1)
        print(f"synthetic render + encode ({args.size} px {args.format}): {n} images in {cpu:.2f} CPU-s = "
              f"{n / cpu:.1f} images/s per core", flush=True)

        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
        cpu0, t0 = tree_cpu_seconds(), time.monotonic()
        info = build_image_dataset(video, progress=lambda _m: None)
        wall, cpu = time.monotonic() - t0, tree_cpu_seconds() - cpu0
        m = info.manifest
        results.update({
            "dataset_images": m["images"], "dataset_bytes": m["total_bytes"],
            "bytes_per_image": round(m["bytes_per_image"]), "build_s": round(wall, 2),
            "build_images_per_s": round(m["images"] / wall, 1), "build_images_per_cpu_s": round(m["images"] / cpu, 1),
        })
        print(f"Ray Data build (h36m_video, {args.cpus} CPUs): {m['images']} images in {wall:.1f} s = "
              f"{results['build_images_per_s']} images/s, {results['build_images_per_cpu_s']} images per CPU-s "
              f"(Ray start-up and scheduling included); {results['bytes_per_image']} bytes/image", flush=True)
        if args.model_config:
            rate = train_rate(image_experiment(args.model_config), args.steps)
            results["training"] = rate
            print(f"training {rate['model']} ({rate['parameters']:,} parameters, {rate['crop_size']} px, "
                  f"{rate['images_per_step']} images a step) on {rate['threads']} CPU threads: {rate['step_s']} s a "
                  f"step = {rate['train_images_per_s']} images/s", flush=True)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0
