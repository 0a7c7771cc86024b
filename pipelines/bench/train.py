"""`raylift bench train --model M --frames T --batch B [--compile [--compile-mode MODE]] [--steps N]
[--device cpu|cuda] [--compare-official DIR]`: training throughput of one model, measured on the
real training step, optionally next to the authors' code in the same process.

Each step is `pipelines.train.loop.train_step`: forward under bf16 autocast on CUDA (fp32 on
CPU), the model's training loss (`models.losses.build_loss`), backward, the optimiser update
(raylift: `build_optimizer`, fused AdamW on CUDA; the authors' code: plain `torch.optim.AdamW`,
as their run.py builds it). Attention is PyTorch's fused `scaled_dot_product_attention`
(models/layers.py). Reported:
- training frames/s, frames = windows x T per step (the 2D frames the step consumes);
- peak memory: `torch.cuda.max_memory_allocated` on CUDA (reset before each model); on CPU the
  process's peak resident set size (`ru_maxrss`, the whole process and cumulative, so with
  `--compare-official` on CPU the second model's figure includes the first's);
- achieved TFLOP/s: FLOPs of one step counted once with `torch.utils.flop_counter` (forward and
  backward matmuls/attention, not the optimiser) times steps / time. Each implementation is
  credited with its own FLOPs (the authors' explicit softmax attention counts like SDPA).

`--compare-official DIR` builds the authors' class from DIR (never vendored: a checkout of their
repository) with the same hyper-parameters, then times both on the same input tensors, batch,
precision and compile setting; the table adds the ratio raylift / official. Fusionformer is
compared on its transformer (`forward_pose`, the released `Fusionformer` class) with an MPJPE
loss over all frames, because the authors' refinement lives outside that class.
Figures, never a pass/fail.
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from typing import Any, Callable, Optional

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="mixste", help="registry name (default mixste)")
    parser.add_argument("--frames", type=int, default=243, help="window length T (default 243)")
    parser.add_argument("--joints", type=int, default=17)
    parser.add_argument("--batch", type=int, default=4, help="windows per step (default 4)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model(s)")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, default=None,
                        help="torch.compile mode (implies --compile; reduce-overhead = CUDA graphs on GPU)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--no-bf16", action="store_true", help="fp32 on CUDA (bf16 autocast is the default)")
    parser.add_argument("--fused", choices=["auto", "on", "off"], default="auto",
                        help="raylift's fused AdamW: auto = on when the model is on CUDA (default)")
    parser.add_argument("--clip-grad", type=float, default=None,
                        help="gradient-norm clipping in the step (default none, as MixSTE trains)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="model.KEY=VALUE",
                        help="model config override, e.g. model.depth=4 or model.checkpoint_blocks=true (repeatable)")
    parser.add_argument("--compare-official", metavar="DIR", default=None,
                        help="also time the authors' model class from this checkout of their repository")
    parser.add_argument("--profile", metavar="FILE", default=None,
                        help="write a torch.profiler table (ops by self time) of 2 raylift steps to FILE")
    parser.add_argument("--json", action="store_true", help="print JSON (one object, or a list with --compare-official)")


def example_batch(model, batch: int, frames: int, joints: int, device) -> dict:
    """A random training batch shaped like the Parquet windows the model trains on."""
    import torch

    from models.cost import example_input

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


class _NotRun(Exception):
    """A measurement that could not run (out of memory): its row says why instead of figures."""


def pose_module(net):
    """The module whose forward the comparison trains: `net`, or for a model with `forward_pose`
    (raylift's Fusionformer) a wrapper running only that (the released class has no refinement)."""
    from torch import nn

    if not hasattr(net, "forward_pose"):
        return net

    class PoseOnly(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):  # (B, T, J, 2) -> (B, T, J, 3)
            return self.inner.forward_pose(x)

    return PoseOnly(net)


  # the sys.path entries load_official added last


def load_official(model_cfg: Any, official_dir: str, frames: int, joints: int = 17):
    """The authors' model class from a checkout `official_dir`, built with `model_cfg`'s settings
    (`pipelines/bench/official.py`)."""
    from pipelines.bench.official import build_official

    return build_official(model_cfg, official_dir, frames, joints)


def time_steps(model, flop_net, data: dict, loss_fn: Callable, optimizer, steps: int, warmup: int, dev,
               bf16: bool, clip_grad: Optional[float]) -> dict[str, Any]:
    """Warm-up then `steps` timed `train_step`s of `model` on `data`; FLOPs counted on `flop_net`."""
    import torch

    from pipelines.train.loop import train_step

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    try:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and dev.type == "cuda"):
            flops = step_flops(flop_net, data, loss_fn)
        for _ in range(warmup):
            train_step(model, data, loss_fn, optimizer, clip_grad=clip_grad, bf16=bf16)
        sync()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        start = time.perf_counter()
        for _ in range(steps):
            train_step(model, data, loss_fn, optimizer, clip_grad=clip_grad, bf16=bf16)
        sync()
        elapsed = time.perf_counter() - start
    except torch.cuda.OutOfMemoryError:
        raise _NotRun("out of memory") from None
    if dev.type == "cuda":
        peak, peak_kind = torch.cuda.max_memory_allocated(dev), "cuda max_memory_allocated"
    else:
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        peak, peak_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, "process peak RSS"
    return {"elapsed_s": elapsed, "flops": flops, "peak_memory_bytes": int(peak), "peak_memory_kind": peak_kind}


def _release(dev) -> None:
    import torch

    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def bench_train(model_name: str, frames: int, batch: int, steps: int = 10, warmup: int = 3, compile: bool = False,
                device: str | None = None, bf16: bool = True, joints: int = 17,
                overrides: list[str] | None = None, compile_mode: str | None = None, fused: Optional[bool] = None,
                clip_grad: Optional[float] = None, official_dir: str | None = None,
                profile: str | None = None) -> dict[str, Any] | list[dict[str, Any]]:
    """raylift's training step figures (a dict), or with `official_dir` [raylift, official] rows,
    timed in this process on the same input tensors."""
    import torch

    from models.losses import build_loss, forward_for_loss
    from models.registry import build_model, count_parameters
    from pipelines.config import TrainConfig
    from pipelines.models.tools import model_config
    from preprocessing.schema import ConfigError
    from pipelines.train.loop import build_optimizer

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible")
    if compile_mode is not None and compile_mode not in COMPILE_MODES:
        raise ConfigError(f"--compile-mode {compile_mode!r}: expected one of {', '.join(COMPILE_MODES)}")
    compile = compile or compile_mode is not None
    use_bf16 = bf16 and dev.type == "cuda"
    cfg = model_config(model_name, overrides or [])
    comparing = official_dir is not None
    # The comparison trains the released class's computation: Fusionformer without refinement.
    loss_name = "mpjpe" if comparing and model_name == "fusionformer" else "auto"
    base_loss = build_loss(model_name, loss_name)

    def loss_fn(m, b):
        return base_loss(forward_for_loss(m, b["keypoints_2d"]), b)

    def compiled(net):
        return torch.compile(net, mode=compile_mode) if compile else net

    def row(impl: str, parameters: int, optimizer_name: str, timing: dict[str, Any] | None, error: str = "") -> dict:
        r = {
            "model": model_name, "implementation": impl, "parameters": parameters,
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
            "precision": "bf16 autocast" if use_bf16 else "fp32", "compile": compile,
            "compile_mode": (compile_mode or "default") if compile else None, "optimizer": optimizer_name,
            "frames": frames, "batch": batch, "steps": steps, "error": error or None,
        }
        if timing is not None:
            elapsed, flops = timing["elapsed_s"], timing["flops"]
            r.update({
                "ms_per_step": 1e3 * elapsed / steps, "frames_per_s": batch * frames * steps / elapsed,
                "windows_per_s": batch * steps / elapsed, "peak_memory_bytes": timing["peak_memory_bytes"],
                "peak_memory_kind": timing["peak_memory_kind"], "gflop_per_step": flops / 1e9,
                "tflop_per_s": flops * steps / elapsed / 1e12,
            })
        return r

    torch.manual_seed(0)
    net = build_model(cfg, frames=frames, joints=joints).to(dev).train()
    data = example_batch(net, batch, frames, joints, dev)
    trained = pose_module(net) if comparing else net
    model = compiled(trained)
    optimizer = build_optimizer(model, TrainConfig(lr=1e-5), fused=fused)
    fused_on = bool(optimizer.defaults.get("fused"))
    opt_name = f"{type(optimizer).__name__}{' fused' if fused_on else ''}"
    if profile:
        write_profile(model, data, loss_fn, optimizer, use_bf16, clip_grad, dev, profile)
    try:
        ours = row("raylift", count_parameters(net), opt_name,
                   time_steps(model, trained, data, loss_fn, optimizer, steps, warmup, dev, use_bf16, clip_grad))
    except _NotRun as e:
        ours = row("raylift", count_parameters(net), opt_name, None, str(e))
    if not comparing:
        return ours
    del model, trained, net, optimizer
    _release(dev)

    torch.manual_seed(0)
    theirs_net = load_official(cfg, official_dir, frames, joints).to(dev).train()
    theirs = compiled(theirs_net)
    # The authors' run.py: optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1), torch's default kernel.
    official_opt = torch.optim.AdamW(theirs_net.parameters(), lr=1e-5, weight_decay=0.1)
    n_official = sum(p.numel() for p in theirs_net.parameters())
    try:
        other = row("official", n_official, "AdamW",
                    time_steps(theirs, theirs_net, data, loss_fn, official_opt, steps, warmup, dev, use_bf16, clip_grad))
    except _NotRun as e:
        other = row("official", n_official, "AdamW", None, str(e))
    del theirs, theirs_net, official_opt
    _release(dev)
    if ours.get("frames_per_s") and other.get("frames_per_s"):
        ours["speedup_vs_official"] = ours["frames_per_s"] / other["frames_per_s"]
    return [ours, other]


def write_profile(model, data: dict, loss_fn: Callable, optimizer, bf16: bool, clip_grad: Optional[float], dev,
                  path: str) -> None:
    """One warm-up step, then a torch.profiler table of 2 steps (ops sorted by self time) to `path`."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from preprocessing.store.storage import atomic_local_file
    from pipelines.train.loop import train_step

    train_step(model, data, loss_fn, optimizer, clip_grad=clip_grad, bf16=bf16)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(2):
            train_step(model, data, loss_fn, optimizer, clip_grad=clip_grad, bf16=bf16)
        if dev.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    with atomic_local_file(path) as tmp:
        tmp.write_text(prof.key_averages().table(sort_by=key, row_limit=30) + "\n")


def _fmt(r: dict[str, Any], key: str, spec: str, scale: float = 1.0) -> str:
    value = r.get(key)
    return "-" if value is None else format(value * scale, spec)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of result rows (raylift and official side by side)."""
    from pipelines.viz.tables import render_table

    body = [[f"{r['model']} T={r['frames']}", r["implementation"], r["precision"],
             r["compile_mode"] if r["compile"] else "eager", r["batch"],
             r["error"] if r.get("error") else _fmt(r, "frames_per_s", ",.0f"),
             _fmt(r, "peak_memory_bytes", ".2f", 2.0 ** -30), _fmt(r, "tflop_per_s", ".3g"),
             f"{_fmt(r, 'speedup_vs_official', '.2f')}{'x' if r.get('speedup_vs_official') else ''}"] for r in rows]
    kinds = sorted({r["peak_memory_kind"] for r in rows if r.get("peak_memory_kind")})
    devices = sorted({r["device"] for r in rows})
    return (render_table(["model", "implementation", "precision", "compile", "batch (windows)", "train frames/s",
                          "peak GiB", "TFLOP/s", "vs official"], body, markdown=True, left=4)
            + f"\n\ndevice: {', '.join(devices)}; peak memory: {', '.join(kinds) or '-'}")


def format_result(r: dict[str, Any]) -> str:
    if r.get("error"):
        return f"{r['model']} T={r['frames']}, batch {r['batch']}: {r['error']}"
    return "\n".join([
        f"{r['model']} ({r['parameters']:,} parameters), T={r['frames']}, batch {r['batch']} windows, "
        f"{r['precision']}{', compiled (' + r['compile_mode'] + ')' if r['compile'] else ''}, {r['optimizer']} "
        f"on {r['device']}",
        f"  {r['ms_per_step']:.1f} ms/step over {r['steps']} steps: {r['frames_per_s']:,.0f} training frames/s "
        f"({r['windows_per_s']:.1f} windows/s)",
        f"  peak memory {r['peak_memory_bytes'] / 2**20:,.0f} MiB ({r['peak_memory_kind']})",
        f"  {r['gflop_per_step']:.2f} GFLOP per step (forward+backward) -> achieved {r['tflop_per_s']:.4f} TFLOP/s",
    ])


def run(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    fused = {"auto": None, "on": True, "off": False}[args.fused]
    result = bench_train(args.model, args.frames, args.batch, steps=args.steps, warmup=args.warmup,
                         compile=args.compile, device=args.device, bf16=not args.no_bf16, joints=args.joints,
                         overrides=args.overrides, compile_mode=args.compile_mode, fused=fused,
                         clip_grad=args.clip_grad, official_dir=args.compare_official, profile=args.profile)
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result) if isinstance(result, list) else format_result(result))
    return 0
