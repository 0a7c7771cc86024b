"""`raylift bench train --model M --frames T --batch B [--compile] [--steps N] [--device cpu|cuda]`:
training throughput of one model, measured on the real training step.

Each step is `pipelines.train.loop.train_step`: forward under bf16 autocast on CUDA (fp32 on
CPU), the model's training loss (`models.losses.build_loss`), backward, AdamW update; attention is
PyTorch's fused `scaled_dot_product_attention` (models/layers.py). Reported:
- training frames/s, frames = windows x T per step (the 2D frames the step consumes);
- peak memory: `torch.cuda.max_memory_allocated` on CUDA; on CPU the process's peak resident set
  size (`ru_maxrss`, the whole process: Python, torch and the model included);
- achieved TFLOP/s: FLOPs of one step counted once with `torch.utils.flop_counter` (forward and
  backward matmuls/attention, not the optimiser) times steps / time.
Figures, never a pass/fail.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="mixste", help="registry name (default mixste)")
    parser.add_argument("--frames", type=int, default=243, help="window length T (default 243)")
    parser.add_argument("--joints", type=int, default=17)
    parser.add_argument("--batch", type=int, default=4, help="windows per step (default 4)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--no-bf16", action="store_true", help="fp32 on CUDA (bf16 autocast is the default)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="model.KEY=VALUE",
                        help="model config override, e.g. model.depth=4 (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def example_batch(model, batch: int, frames: int, joints: int, device) -> dict:
    """A random training batch shaped like the Parquet windows the model trains on."""
    import torch

    from pipelines.models.tools import example_input

    x = example_input(model, batch, frames, joints, device=device)
    target_frames = frames if model.output_mode == "seq2seq" else 1
    target = torch.randn(*x.shape[:1], target_frames, *x.shape[2:-1], 3, device=device) * 0.2
    return {"keypoints_2d": x, "positions_3d": target, "mask": torch.ones(batch, target_frames, device=device)}


def step_flops(model, batch: dict, loss_fn) -> int:
    """FLOPs of one forward + backward (counted once, outside the timed steps)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = loss_fn(model, batch)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def bench_train(model_name: str, frames: int, batch: int, steps: int = 10, warmup: int = 3, compile: bool = False,
                device: str | None = None, bf16: bool = True, joints: int = 17,
                overrides: list[str] | None = None) -> dict[str, Any]:
    import torch

    from models.losses import build_loss, forward_for_loss
    from models.registry import build_model, count_parameters
    from pipelines.config import TrainConfig
    from pipelines.models.tools import model_config
    from preprocessing.schema import ConfigError
    from pipelines.train.loop import build_optimizer, train_step

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible")
    torch.manual_seed(0)
    net = build_model(model_config(model_name, overrides or []), frames=frames, joints=joints).to(dev).train()
    model = torch.compile(net) if compile else net
    base_loss = build_loss(model_name)

    def loss_fn(m, b):
        return base_loss(forward_for_loss(m, b["keypoints_2d"]), b)

    data = example_batch(net, batch, frames, joints, dev)
    use_bf16 = bf16 and dev.type == "cuda"
    flops = step_flops(net, data, loss_fn)
    optimizer = build_optimizer(model, TrainConfig(lr=1e-5))

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        train_step(model, data, loss_fn, optimizer, clip_grad=1.0, bf16=use_bf16)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, data, loss_fn, optimizer, clip_grad=1.0, bf16=use_bf16)
    sync()
    elapsed = time.perf_counter() - start
    if dev.type == "cuda":
        peak, peak_kind = torch.cuda.max_memory_allocated(dev), "cuda max_memory_allocated"
    else:
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        peak, peak_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, "process peak RSS"
    return {
        "model": model_name,
        "parameters": count_parameters(net),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "precision": "bf16 autocast" if use_bf16 else "fp32",
        "compile": compile,
        "frames": frames,
        "batch": batch,
        "steps": steps,
        "ms_per_step": 1e3 * elapsed / steps,
        "frames_per_s": batch * frames * steps / elapsed,
        "windows_per_s": batch * steps / elapsed,
        "peak_memory_bytes": int(peak),
        "peak_memory_kind": peak_kind,
        "gflop_per_step": flops / 1e9,
        "tflop_per_s": flops * steps / elapsed / 1e12,
    }


def format_result(r: dict[str, Any]) -> str:
    return "\n".join([
        f"{r['model']} ({r['parameters']:,} parameters), T={r['frames']}, batch {r['batch']} windows, "
        f"{r['precision']}{', compiled' if r['compile'] else ''} on {r['device']}",
        f"  {r['ms_per_step']:.1f} ms/step over {r['steps']} steps: {r['frames_per_s']:,.0f} training frames/s "
        f"({r['windows_per_s']:.1f} windows/s)",
        f"  peak memory {r['peak_memory_bytes'] / 2**20:,.0f} MiB ({r['peak_memory_kind']})",
        f"  {r['gflop_per_step']:.2f} GFLOP per step (forward+backward) -> achieved {r['tflop_per_s']:.4f} TFLOP/s",
    ])


def run(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    result = bench_train(args.model, args.frames, args.batch, steps=args.steps, warmup=args.warmup,
                         compile=args.compile, device=args.device, bf16=not args.no_bf16, joints=args.joints,
                         overrides=args.overrides)
    print(json.dumps(result) if args.json else format_result(result))
    return 0
