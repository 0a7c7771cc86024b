"""Behaviour every registered model must have (shapes, gradients, determinism, dropout, bf16,
overfitting), plus the exact architecture sizes of MixSTE and PoseFormer.

Parametrised over `models.registry.MODELS`; `TINY` holds each model's small config (the only
per-model knowledge here). A model whose module is missing fails with ImportError.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from models.layers import DropPath
from models.registry import MODELS, build_model, config_class, count_parameters, parse_model_config
from preprocessing.schema import ConfigError
from tests.helpers import assert_gradients_reach_every_parameter

# Small configs: fast on a shared 2-core CPU, still every component of the model.
TINY: dict[str, dict] = {
    "mixste": {"dim": 16, "depth": 2, "heads": 2},
    "poseformer": {"spatial_dim": 8, "depth": 2, "heads": 2},
    "crossformer": {"spatial_dim": 8, "depth": 2, "heads": 2, "variant": "paper"},  # official: T=81 only
    "fusionformer": {"dim": 8, "L_s": 1, "L_c": 1, "heads": 2, "refine_hidden": 16, "variant": "paper"},
    "multiview": {"dim": 8, "spatial_depth": 1, "relation_depth": 1, "heads": 2},
}
NAMES = list(MODELS)
VIEWS = 4


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest single-threaded on a CPU shared with other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(name: str, frames: int = 9, joints: int = 17, **overrides) -> torch.nn.Module:
    cfg = parse_model_config({"name": name, **TINY[name], **overrides}, "model")
    return build_model(cfg, frames=frames, joints=joints)


def drop_rates(name: str, rate: float) -> dict[str, float]:
    """Every dropout-like probability of the model's config (`drop_rate`, `drop_path_rate`, ...) set to `rate`."""
    return {f.name: rate for f in dataclasses.fields(config_class(name)) if "drop" in f.name}


def inputs(model: torch.nn.Module, batch: int, frames: int, joints: int) -> torch.Tensor:
    if model.multiview:
        return torch.randn(batch, frames, VIEWS, joints, 2)
    return torch.randn(batch, frames, joints, 2)


def expected_shape(model: torch.nn.Module, batch: int, frames: int, joints: int) -> tuple[int, ...]:
    if model.multiview:
        return (batch, frames, VIEWS, joints, 3)
    return (batch, frames if model.output_mode == "seq2seq" else 1, joints, 3)


def test_every_model_has_tiny_config():
    assert set(TINY) == set(MODELS)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("frames,joints", [(1, 17), (9, 17), (27, 17), (81, 17), (243, 17), (9, 16), (27, 16)])
def test_output_shape(name, frames, joints):
    torch.manual_seed(0)
    model = tiny(name, frames, joints).eval()
    assert model.output_mode in ("seq2seq", "seq2frame")
    x = inputs(model, 2, frames, joints)
    with torch.no_grad():
        y = model(x)
    assert tuple(y.shape) == expected_shape(model, 2, frames, joints)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
def test_wrong_window_is_refused(name):
    model = tiny(name, 9, 17).eval()
    with pytest.raises((ValueError, RuntimeError)):
        model(inputs(model, 1, 10, 17))


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    model = tiny(name, 9, 17).train()
    model(inputs(model, 2, 9, 17)).square().mean().backward()
    assert_gradients_reach_every_parameter(model, name)


@pytest.mark.parametrize("name", NAMES)
def test_eval_is_deterministic_and_train_mode_drops(name):
    torch.manual_seed(0)
    model = tiny(name, 9, 17, **drop_rates(name, 0.3))
    x = inputs(model, 2, 9, 17)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        reference = model(x)
        model.train()
        a, b = model(x), model(x)
    assert not torch.equal(a, b), f"{name}: dropout/drop-path from the config is inactive in train mode"
    assert not torch.allclose(a, reference)


@pytest.mark.parametrize("name", NAMES)
def test_without_drop_rates_train_equals_eval(name):
    torch.manual_seed(0)
    model = tiny(name, 9, 17, **drop_rates(name, 0.0))
    x = inputs(model, 2, 9, 17)
    with torch.no_grad():
        train = model.train()(x)
        evaluation = model.eval()(x)
    torch.testing.assert_close(train, evaluation)


@pytest.mark.parametrize("name", ["mixste", "poseformer"])
def test_drop_path_schedule_follows_config(name):
    model = tiny(name, 9, 17, drop_path_rate=0.3)
    rates = [m.p for m in model.modules() if isinstance(m, DropPath)]
    assert min(rates) == 0.0 and max(rates) == pytest.approx(0.3)
    model = tiny(name, 9, 17, drop_rate=0.25)
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.25}


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_on_cpu(name):
    torch.manual_seed(0)
    model = tiny(name, 9, 17).eval()
    x = inputs(model, 2, 9, 17)
    with torch.no_grad():
        full = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x)
    assert half.shape == full.shape and torch.isfinite(half).all()
    assert (half.float() - full).abs().max() < 0.1 * full.abs().max() + 0.05


@pytest.mark.parametrize("name", NAMES)
def test_tiny_model_overfits_a_few_windows(name):
    """A handful of windows whose 3D is a fixed per-joint function of the 2D: loss falls 10x."""
    torch.manual_seed(0)
    frames, joints = 9, 17
    model = tiny(name, frames, joints, **drop_rates(name, 0.0)).train()
    x = inputs(model, 4, frames, joints)
    weights, offsets = torch.randn(joints, 2, 3) * 0.3, torch.randn(joints, 3) * 0.3
    target = torch.einsum("...jc,jcd->...jd", x, weights) + offsets
    if not model.multiview and model.output_mode == "seq2frame":
        target = target[:, frames // 2 : frames // 2 + 1]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(300):
        loss = (model(x) - target).square().mean()
        losses.append(loss.item())
        if losses[-1] < losses[0] / 10:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0] / 10, f"{name}: loss {losses[0]:.4f} -> {losses[-1]:.4f} in {len(losses)} steps"


def test_mixste_compiles_without_graph_breaks():
    """torch.compile-ability: Dynamo captures MixSTE's forward as one graph (no inductor run)."""
    import torch._dynamo

    torch._dynamo.reset()
    model = tiny("mixste", 9, 17).eval()
    explanation = torch._dynamo.explain(model)(torch.randn(1, 9, 17, 2))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.slow
def test_mixste_compiled_matches_eager():
    """torch.compile(fullgraph=True) with the default inductor backend: same outputs as eager."""
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = tiny("mixste", 9, 17).eval()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 9, 17, 2)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "name,frames,params",
    [("mixste", 243, 33_783_811), ("mixste", 81, 33_700_867),
     ("poseformer", 9, 9_563_645), ("poseformer", 27, 9_573_455), ("poseformer", 81, 9_602_885)],
)
def test_paper_parameter_counts(name, frames, params):
    with torch.device("meta"):
        model = build_model(parse_model_config({"name": name}), frames=frames, joints=17)
    assert count_parameters(model) == params


def test_paper_defaults():
    mixste = parse_model_config({"name": "mixste"})
    assert (mixste.dim, mixste.depth, mixste.heads, mixste.mlp_ratio, mixste.qkv_bias) == (512, 8, 8, 2.0, True)
    assert mixste.drop_path_rate == 0.1
    poseformer = parse_model_config({"name": "poseformer"})
    assert (poseformer.spatial_dim, poseformer.depth, poseformer.heads, poseformer.mlp_ratio) == (32, 4, 8, 2.0)
    assert poseformer.drop_path_rate == 0.1
    assert "frames" not in {f.name for f in dataclasses.fields(mixste)}


def test_mixste_and_poseformer_layout():
    mixste = tiny("mixste", 27, 17)
    assert mixste.output_mode == "seq2seq" and not mixste.multiview
    assert tuple(mixste.temporal_pos.shape) == (1, 27, 16) and tuple(mixste.spatial_pos.shape) == (1, 17, 16)
    assert len(mixste.spatial_blocks) == len(mixste.temporal_blocks) == 2
    poseformer = tiny("poseformer", 27, 16)
    assert poseformer.output_mode == "seq2frame"
    assert tuple(poseformer.temporal_pos.shape) == (1, 27, 8 * 16)
    assert tuple(poseformer.head.proj.weight.shape) == (16 * 3, 8 * 16)


def test_mixste_mixes_frames_and_joints():
    """Seq2seq over the whole window: changing one frame's input changes other frames' outputs."""
    torch.manual_seed(0)
    model = tiny("mixste", 9, 17).eval()
    x = torch.randn(1, 9, 17, 2)
    x2 = x.clone()
    x2[0, 0, 3] += 1.0
    with torch.no_grad():
        delta = (model(x2) - model(x)).abs().amax(dim=-1)[0]  # (T, J)
    assert (delta[1:] > 0).any(dim=1).all()  # every other frame sees it
    assert (delta[:, [j for j in range(17) if j != 3]] > 0).any()


@pytest.mark.parametrize(
    "value,message",
    [
        ({"name": "mixste", "dim": 30, "heads": 8}, "divisible"),
        ({"name": "mixste", "depth": 0}, "positive"),
        ({"name": "mixste", "drop_path_rate": 1.5}, "drop_path_rate"),
        ({"name": "mixste", "frames": 243}, "frames"),
        ({"name": "poseformer", "spatial_dim": 12, "heads": 8}, "divisible"),
        ({"name": "poseformer", "mlp_ratio": 0}, "mlp_ratio"),
        ({"name": "nonesuch"}, "nonesuch"),
    ],
)
def test_bad_model_configs_are_refused(value, message):
    with pytest.raises(ConfigError, match=message):
        parse_model_config(value, "model")


@pytest.mark.parametrize("name", NAMES)
def test_summary_counts_every_model(name):
    from pipelines.models.tools import summarize

    overrides = [f"model.{k}={v}" for k, v in TINY[name].items()]
    s = summarize(name, 9, 17, overrides)
    assert s["parameters"] == count_parameters(tiny(name, 9, 17))
    assert s["flops_total"] > 0 and s["flops_total"] == 2 * s["macs_total"]
    assert s["flops_by_op"].get("bmm", 0) + s["flops_by_op"].get("baddbmm", 0) > 0  # attention counted


def test_bench_model_reports_every_model(capsys):
    import argparse

    from pipelines.bench import model as bench_model

    parser = argparse.ArgumentParser()
    bench_model.add_arguments(parser)
    small = ["model.dim=8", "model.spatial_dim=8", "model.depth=1", "model.heads=2", "model.L_s=1", "model.L_c=1",
             "model.spatial_depth=1", "model.relation_depth=1", "model.refine_hidden=16", "model.variant=paper"]
    args = parser.parse_args(["--frames", "9", "--batch", "1", "--steps", "1", "--warmup", "0", "--json",
                              *[a for k in small for a in ("--set", k)]])
    assert bench_model.run(args) == 0
    import json

    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == NAMES
    for row in rows:
        cfg = bench_model._config(row["model"], small)
        assert cfg.heads == 2
        assert row["parameters"] == count_parameters(build_model(cfg, frames=9, joints=17))
        assert row["ms_per_step"] > 0 and row["frames_per_s"] > 0
