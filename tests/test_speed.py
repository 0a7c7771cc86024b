"""Speed options stay the same maths, and the side-by-side benchmark times what it says.

Each optimisation is checked against the eager/default path on CPU: fused AdamW, MixSTE's
activation checkpointing, the head-before-re-layout, torch.compile's modes and the prefetching
host-to-device iterator. The comparison harness runs on a fake "authors' repository" written
into tmp_path (tests never fetch the real ones).
"""
from __future__ import annotations

import argparse
import textwrap

import pytest
import torch

from models.mixste import MixSTE, MixSTEConfig
from pipelines.config import TrainConfig
from pipelines.train.loop import build_optimizer, lookahead, prefetch_to_device

TINY = dict(dim=16, depth=2, heads=2, drop_path_rate=0.1)


def _batch(frames: int = 9, b: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    return {"keypoints_2d": torch.randn(b, frames, 17, 2, generator=g),
            "positions_3d": 0.2 * torch.randn(b, frames, 17, 3, generator=g), "mask": torch.ones(b, frames)}


def test_fused_adamw_matches_default_adamw():
    # The same gradients into both optimisers: the update itself must agree. (Training both models
    # end to end would compare noise: attention's key bias has an exactly-zero true gradient, and
    # Adam normalises its rounding noise into lr-sized steps.)
    torch.manual_seed(0)
    a = MixSTE(MixSTEConfig(**TINY), frames=9)
    b = MixSTE(MixSTEConfig(**TINY), frames=9)
    b.load_state_dict(a.state_dict())
    cfg = TrainConfig(lr=1e-3)
    plain, fused = build_optimizer(a, cfg, fused=False), build_optimizer(b, cfg, fused=True)
    assert fused.defaults["fused"] and not plain.defaults.get("fused")
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        for pa, pb in zip(a.parameters(), b.parameters()):
            pa.grad = torch.randn(pa.shape, generator=g)
            pb.grad = pa.grad.clone()
        plain.step()
        fused.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)


def test_fused_adamw_auto_only_on_cuda():
    model = MixSTE(MixSTEConfig(**TINY), frames=9)  # CPU parameters: torch's default kernel, as before
    assert not build_optimizer(model, TrainConfig()).defaults.get("fused")


def test_checkpoint_blocks_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = MixSTE(MixSTEConfig(**TINY), frames=9).train()
    ckpt = MixSTE(MixSTEConfig(**TINY, checkpoint_blocks=True), frames=9).train()
    ckpt.load_state_dict(plain.state_dict())
    x = _batch()["keypoints_2d"]
    outs, grads = [], []
    for model in (plain, ckpt):
        torch.manual_seed(7)  # drop-path is live: checkpointing must replay the same draws
        y = model(x)
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-6)
    for ga, gb in zip(*grads):
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # evaluation never checkpoints
        torch.testing.assert_close(plain.eval()(x), ckpt.eval()(x), rtol=0, atol=1e-6)


def test_mixste_head_before_relayout_is_the_same_per_token_head():
    torch.manual_seed(0)
    model = MixSTE(MixSTEConfig(**TINY), frames=9).eval()
    x = _batch()["keypoints_2d"]
    captured = {}
    model.temporal_norm.register_forward_hook(lambda m, i, o: captured.__setitem__("last", o))
    with torch.no_grad():
        y = model(x)  # (B, T, J, 3)
        features = captured["last"].reshape(2, 17, 9, -1).permute(0, 2, 1, 3)  # (B*J, T, C) -> (B, T, J, C)
        torch.testing.assert_close(y, model.head(features), rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # 144 s on the shared 2-core machine (inductor's C++ build); GPU modes run in gpu_suite.sh
def test_compile_matches_eager():
    torch.manual_seed(0)
    model = MixSTE(MixSTEConfig(dim=16, depth=1, heads=2, drop_path_rate=0.0), frames=9).train()
    x = _batch()["keypoints_2d"]
    eager = model(x)
    eager.square().sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model)(x)
    compiled.square().sum().backward()
    # bf16 tolerance (the training precision on GPU); on CPU fp32 the two agree far closer.
    torch.testing.assert_close(compiled, eager, rtol=1.6e-2, atol=1e-3)
    for p, g in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g, rtol=1.6e-2, atol=1e-3)


def test_lookahead_issues_the_next_item_before_the_current_one_is_used():
    events: list[str] = []
    out = []
    for item in lookahead(range(4), 1, lambda i: events.append(f"issue{i}") or i,
                          lambda i: events.append(f"ready{i}") or i):
        out.append(item)
        events.append(f"use{item}")
    assert out == [0, 1, 2, 3]
    # Batch i+1's copy is in flight while batch i's step runs.
    assert events[:4] == ["issue0", "issue1", "ready0", "use0"]
    assert events.index("issue3") < events.index("use2")
    with pytest.raises(ValueError, match="depth"):
        list(lookahead([1], 0, lambda i: i, lambda i: i))


def test_prefetch_to_device_on_cpu_passes_batches_through():
    batches = [_batch(b=1), _batch(b=2)]
    got = list(prefetch_to_device(iter(batches), torch.device("cpu"), depth=2))
    assert len(got) == 2 and all(g is b for g, b in zip(got, batches))


# --------------------------------------------------------------------------- comparison harness
FAKE_MIXSTE2 = '''
import torch
from torch import nn


class MixSTE2(nn.Module):
    """Stand-in for the authors' class: the same constructor arguments, a per-token MLP."""

    def __init__(self, num_frame, num_joints, in_chans, embed_dim_ratio, depth, num_heads, mlp_ratio,
                 qkv_bias, qk_scale, drop_rate, attn_drop_rate, drop_path_rate):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_chans, embed_dim_ratio), nn.GELU(), nn.Linear(embed_dim_ratio, 3))

    def forward(self, x):  # (B, T, J, 2) -> (B, T, J, 3)
        return self.net(x)
'''


def _fake_official(tmp_path):
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "model_cross.py").write_text(textwrap.dedent(FAKE_MIXSTE2))
    return str(tmp_path)


def test_compare_official_times_both_on_the_same_setting(tmp_path):
    from pipelines.bench.train import bench_train, format_table

    rows = bench_train("mixste", frames=9, batch=2, steps=2, warmup=1, overrides=[f"model.{k}={v}" for k, v in
                                                                               TINY.items()],
                       official_dir=_fake_official(tmp_path))
    ours, theirs = rows
    assert (ours["implementation"], theirs["implementation"]) == ("raylift", "official")
    for key in ("frames", "batch", "precision", "compile", "steps"):
        assert ours[key] == theirs[key]
    # The fake has 2*16+16 + 16*3+3 parameters: the official row timed the official class.
    assert theirs["parameters"] == 99 and ours["parameters"] > 99
    assert ours["speedup_vs_official"] == pytest.approx(ours["frames_per_s"] / theirs["frames_per_s"])
    assert theirs["gflop_per_step"] < ours["gflop_per_step"]
    table = format_table(rows)
    assert "| mixste T=9 | raylift | fp32 | eager | 2 |" in table and "| official |" in table


def test_compare_official_missing_file_is_a_config_error(tmp_path, capsys):
    from pipelines.cli import main

    code = main(["bench", "train", "--model", "mixste", "--frames", "9", "--batch", "1", "--steps", "1",
                 "--set", "model.dim=16", "--set", "model.depth=1", "--set", "model.heads=2",
                 "--compare-official", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "common/model_cross.py not found" in err and "MixSTE2" in err


def test_bench_train_refuses_unknown_compile_mode():
    from pipelines.bench.train import bench_train
    from preprocessing.schema import ConfigError

    with pytest.raises(ConfigError, match="--compile-mode 'fast'"):
        bench_train("mixste", frames=9, batch=1, compile_mode="fast", overrides=["model.dim=16", "model.heads=2"])


def test_bench_train_profile_writes_a_table(tmp_path):
    from pipelines.bench import train as bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "profile.txt"
    args = parser.parse_args(["--model", "mixste", "--frames", "9", "--batch", "1", "--steps", "1", "--warmup", "0",
                              "--set", "model.dim=16", "--set", "model.depth=1", "--set", "model.heads=2",
                              "--fused", "on", "--profile", str(out), "--json"])
    assert bench.run(args) == 0
    text = out.read_text()
    assert "aten::" in text and "Self CPU" in text


# --------------------------------------------------------------------------- the suite
FAKE_FILES = {"mixste": ("model_cross.py", "MixSTE2", False), "poseformer": ("model_poseformer.py", "PoseTransformer", True),
              "crossformer": ("model_crossformer.py", "PoseTransformer", True),
              "fusionformer": ("Fusionformer.py", "Fusionformer", False)}


def _fake_official_root(root):
    for model, (name, cls, centre) in FAKE_FILES.items():
        (root / model / "common").mkdir(parents=True)
        text = textwrap.dedent(FAKE_MIXSTE2).replace("class MixSTE2", f"class {cls}")
        if centre:  # seq2frame: the centre frame only, (B, 1, J, 3)
            text = text.replace("return self.net(x)", "return self.net(x[:, x.shape[1] // 2:x.shape[1] // 2 + 1])")
        (root / model / "common" / name).write_text(text)
    return root


@pytest.mark.slow  # 226 s on the shared, loaded 2-core dev machine (a real CrossFormer at T=81 among them)
def test_suite_writes_every_row_and_a_summary(tmp_path):
    import json

    from pipelines.bench.suite import MODELS, run_suite, settings, summarize

    order = settings((4, 16, 64), ("default",))
    assert (order[0].batch, order[0].bf16, order[0].compile_mode) == (16, True, None)  # the headline first
    assert len(order) == len(MODELS) * 3 * 2 * 2 and len(settings((4,), (), bf16=False)) == len(MODELS)

    root, out = _fake_official_root(tmp_path / "official"), tmp_path / "out"
    rows = run_suite(str(root), str(out), tiny=True, batches=(1,), compile_modes=(), steps=1, warmup=0)
    assert [(r["model"], r["implementation"]) for r in rows] == [(m, i) for m in MODELS for i in ("raylift", "official")]
    assert all(r["frames_per_s"] > 0 and r["error"] is None for r in rows)
    lines = (out / "bench.jsonl").read_text().splitlines()
    assert [json.loads(line)["model"] for line in lines] == [r["model"] for r in rows]
    assert "| crossformer T=81 | official |" in (out / "bench.md").read_text()

    skipped = run_suite(str(root), str(tmp_path / "late"), tiny=True, batches=(1,), compile_modes=(), budget_s=-1)
    assert {r["error"] for r in skipped} == {"skipped: time budget spent"}

    bare = next(r for r in rows if r["model"] == "mixste" and r["implementation"] == "raylift")
    metrics = tmp_path / "metrics.csv"
    half = bare["frames_per_s"] / 2 / 9  # windows/s of a Ray run at half the bare speed, T=9
    metrics.write_text(f"epoch,windows_per_s\n1,1.0\n2,{half}\n3,{half}\n")
    text = summarize(str(out), str(metrics), train_frames=9, train_batch=1)
    assert "Ray Train overhead: 50.0%" in text and "epochs 2-3" in text
    assert "projected full MixSTE-243 recipe at fastest batch" in text


def test_load_official_switches_between_repositories(tmp_path):
    # Every authors' repository calls its package `common`; one of them (Fusionformer) makes it a
    # regular package, which Python would keep preferring if its folder stayed on sys.path.
    from pipelines.bench.train import load_official
    from pipelines.models.tools import model_config

    root = _fake_official_root(tmp_path)
    (root / "fusionformer" / "common" / "__init__.py").write_text("")
    for name in ("fusionformer", "mixste", "poseformer", "fusionformer", "crossformer"):
        cfg = model_config(name, [])
        model = load_official(cfg, str(root / name), frames=9)
        assert type(model).__module__.startswith("common.") and type(model).__name__ == FAKE_FILES[name][1]
