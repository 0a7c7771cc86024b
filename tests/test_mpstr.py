"""MPSTR (images -> 2D keypoints): parity with the authors' SwinPose, shapes, variants, training.

Parity fixtures in ../shared/reference/parity (`mpstr2d.*`, see its README): a small SwinPose in
the authors' checkpoint format, its eval-mode output on 5 images, and the full-size key layout.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from models.checkpoint import CheckpointError
from models.convert import (
    convert_mpstr_state_dict,
    load_official_file,
    load_official_mpstr,
    mpstr_key,
    mpstr_official_state_dict,
)
from models.losses import build_loss, forward_for_loss
from models.mpstr import MPSTRConfig, official_config
from models.registry import IMAGE_MODELS, MODELS, build_model, count_parameters, parse_model_config
from preprocessing.schema import ConfigError
from tests.helpers import assert_gradients_reach_every_parameter

# Tensors SwinPose holds but never uses in its forward pass (README "What runs").
UNUSED = ["backbone.head.bias", "backbone.head.weight", "keypoint_head.Temporal_pos_embed",
          "keypoint_head.weighted_mean.bias", "keypoint_head.weighted_mean.weight"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest single-threaded on a CPU shared with other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**overrides) -> MPSTRConfig:
    """A Swin small enough for CPU tests: 32x32 crops, grids 8 and 4, window 4 (a shifted block)."""
    values = dict(img_size=32, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4, relation_depth=1,
                  relation_heads=4, views=4, drop_path_rate=0.0, relation_drop_path_rate=0.0)
    return MPSTRConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def mpstr_fixture(parity_dir):
    if not (parity_dir / "mpstr2d.io.npz").is_file():
        pytest.skip(f"mpstr2d fixtures not found in {parity_dir}")
    with np.load(parity_dir / "mpstr2d.io.npz", allow_pickle=False) as z:
        io = {k: z[k] for k in ("input", "output", "backbone_tokens")}
        config = json.loads(str(z["config"]))
    return parity_dir, config, io


def test_official_outputs_reproduced(mpstr_fixture):
    parity_dir, config, io = mpstr_fixture
    model, info = load_official_mpstr(parity_dir / "mpstr2d.ckpt.bin", config["model"]["backbone"])
    x = torch.from_numpy(io["input"])  # (5, 3, 96, 96): one call, one sequence, as SwinPose sees it
    assert model.cfg.input_norm == "imagenet"  # the authors' transform, inside raylift's model
    crops = x * model.input_std + model.input_mean  # the [0, 1] crops that normalise to x
    with torch.no_grad():
        tokens = model.tokens(x)  # (5, 768)
        y = model(crops)  # (5, 17, 2)
    assert y.shape == io["output"].shape
    assert np.abs(y.numpy() - io["output"]).max() < 1e-5
    assert np.abs(tokens.numpy() - io["backbone_tokens"][0]).max() < 1e-5
    assert info["epoch"] == 7
    # Only config-derived buffers and the tensors SwinPose never uses are dropped.
    buffers = [k for k in info["dropped"] if k.endswith(("relative_position_index", "attn_mask"))]
    assert sorted(set(info["dropped"]) - set(buffers)) == UNUSED
    assert len(buffers) == 8 + 3  # one index per block, masks in layers 0-2 block 1
    # 39,462,383 official parameters less the unused head (26,146), Temporal_pos_embed and weighted_mean.
    assert count_parameters(model) == 39_462_383 - 26_146 - 128 * 768 - 129


def test_dropped_buffers_equal_timms_rebuilt_ones(mpstr_fixture):
    parity_dir, config, _ = mpstr_fixture
    path = parity_dir / "mpstr2d.ckpt.bin"
    state = mpstr_official_state_dict(load_official_file(path), str(path))
    model = build_model(official_config(config["model"]["backbone"]), frames=1)
    for key, value in state.items():
        if key.endswith(("relative_position_index", "attn_mask")):
            ours = model.get_submodule(key.rsplit(".", 1)[0]).get_buffer(key.rsplit(".", 1)[1])
            assert torch.equal(ours.to(value.dtype), value), key
    masked = [n for n, m in model.backbone.named_modules() if getattr(m, "attn_mask", None) is not None]
    assert len(masked) == 3  # no timm block shifts where the authors' does not


def test_full_size_key_layout_converts(parity_dir):
    path = parity_dir / "mpstr2d.keys.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    layout = json.loads(path.read_text())
    shapes = {k: tuple(v) for k, v in layout["state_dict"].items()}
    assert len(shapes) == 247
    cfg = official_config(layout["config"]["model"]["backbone"])  # {} -> Swin-T defaults
    assert (cfg.img_size, cfg.depths, cfg.window_size) == (224, (2, 2, 6, 2), 7)
    with torch.device("meta"):
        model = build_model(cfg, frames=1)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mapped = {mpstr_key(k): s for k, s in shapes.items() if mpstr_key(k) is not None}
    assert mapped == own
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    converted, dropped = convert_mpstr_state_dict(state, model, "keys.json")
    assert set(converted) == set(own)
    assert sum(k.endswith("attn_mask") for k in dropped) == 5
    assert sorted(k for k in dropped if not k.endswith(("relative_position_index", "attn_mask"))) == UNUSED
    params = {k: s for k, s in shapes.items() if not k.endswith(("relative_position_index", "attn_mask"))}
    assert layout["params"] == 46_581_311 == sum(math.prod(s) for s in params.values())
    assert count_parameters(model) == layout["params"] - sum(math.prod(shapes[k]) for k in UNUSED)


def test_converter_reports_unknown_and_missing_keys():
    model = build_model(tiny(variant="official"), frames=1)
    with pytest.raises(CheckpointError, match="missing keys"):
        convert_mpstr_state_dict({"backbone.norm.weight": model.backbone.norm.weight}, model, "x")
    with pytest.raises(CheckpointError, match="unexpected keys: bogus"):
        convert_mpstr_state_dict({"bogus": torch.zeros(1)}, model, "x")


def test_paper_shapes_and_baseline():
    x = torch.randn(2, 3, 2, 3, 32, 32)  # (B, T, V, 3, H, W)
    model = build_model(tiny(), frames=3, joints=5).eval()
    assert model(x).shape == (2, 3, 2, 5, 2)
    base = build_model(tiny(baseline=True), frames=3, joints=5).eval()
    assert base.relations is None and count_parameters(base) < count_parameters(model)
    with torch.no_grad():
        y = base(x)
        # Without the relations module each image is predicted on its own.
        alone = base(x[:1, :1, :1].expand(1, 3, 1, 3, 32, 32).contiguous())
    assert y.shape == (2, 3, 2, 5, 2)
    torch.testing.assert_close(alone[0, 0, 0], y[0, 0, 0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="T=3"):
        model(torch.randn(1, 2, 2, 3, 32, 32))
    with pytest.raises(ValueError, match="views=4"):
        model(torch.randn(1, 3, 5, 3, 32, 32))


def test_masked_relations_keep_every_parameter_but_no_image_sees_another():
    """The ablation control: the relations module with each image attending only to itself."""
    torch.manual_seed(0)
    full = build_model(tiny(), frames=3, joints=5).eval()
    masked = build_model(tiny(masked_relations=True), frames=3, joints=5).eval()
    masked.load_state_dict(full.state_dict())  # the very same parameters
    assert count_parameters(masked) == count_parameters(full)
    x = torch.rand(1, 3, 2, 3, 32, 32)
    other = x.clone()
    other[0, 1:, :] = torch.rand(2, 2, 3, 32, 32)  # every image but frame 0 changes
    other[0, 0, 1] = torch.rand(3, 32, 32)  # and frame 0's second view
    with torch.no_grad():
        torch.testing.assert_close(masked(other)[0, 0, 0], masked(x)[0, 0, 0], atol=1e-5, rtol=1e-5)
        assert (full(other)[0, 0, 0] - full(x)[0, 0, 0]).abs().max() > 1e-4  # the full model looks across
        assert (masked(x) - full(x)).abs().max() > 1e-4
    for bad in ({"masked_relations": True, "baseline": True}, {"masked_relations": True, "variant": "official"}):
        with pytest.raises(ConfigError, match="masked_relations"):
            parse_model_config({"name": "mpstr", **bad})


def test_crops_are_normalised_with_the_imagenet_statistics_inside_the_model():
    model = build_model(tiny(), frames=1, joints=3).eval()
    plain = build_model(tiny(input_norm="none"), frames=1, joints=3).eval()
    plain.load_state_dict(model.state_dict())
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])  # timm's IMAGENET_DEFAULT_*
    x = torch.rand(1, 1, 1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain((x - mean[:, None, None]) / std[:, None, None]))


def test_token_projection():
    model = build_model(tiny(token_dim=24, relation_heads=3), frames=2, joints=4)
    assert isinstance(model.token_proj, torch.nn.Linear) and model.token_proj.out_features == 24
    assert model(torch.randn(1, 2, 4, 3, 32, 32)).shape == (1, 2, 4, 4, 2)


def test_official_batch_is_the_sequence():
    torch.manual_seed(0)
    model = build_model(tiny(variant="official"), frames=1, joints=17).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        y = model(x)  # (4, 17, 2)
        other = x.clone()
        other[3] = torch.randn(3, 32, 32)
        y_other = model(other)
        y_short = model(x[:3])
        # Paper-style input: all B*T*V images form one sequence, in (b, t, v) order.
        y6 = model(x.reshape(1, 2, 2, 3, 32, 32))
    assert y.shape == (4, 17, 2)
    assert (y_other[:3] - y[:3]).abs().max() > 1e-4  # image 3 changes the predictions for images 0-2
    assert (y_short - y[:3]).abs().max() > 1e-4
    torch.testing.assert_close(y6, y.reshape(1, 2, 2, 17, 2))
    perm = torch.tensor([2, 0, 3, 1])  # ... yet equivariant: no notion of position in the sequence
    torch.testing.assert_close(model(x[perm]).detach(), y[perm], atol=1e-5, rtol=1e-5)


def test_paper_variant_distinguishes_views():
    torch.manual_seed(0)
    model = build_model(tiny(), frames=2, joints=3).eval()
    x = torch.randn(1, 2, 3, 3, 32, 32)
    perm = torch.tensor([2, 0, 1])
    with torch.no_grad():
        y = model(x)
        y_perm = model(x[:, :, perm])
        assert (y_perm - y[:, :, perm]).abs().max() > 1e-4  # E_3D: swapping cameras is not a relabelling
        model.relations.view_embed.zero_()  # without E_3D the cross-view attention is equivariant
        torch.testing.assert_close(model(x[:, :, perm]), model(x)[:, :, perm], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides", [{}, {"baseline": True}, {"masked_relations": True},
                                       {"variant": "official"}, {"token_dim": 24,
                                                                                         "relation_heads": 3},
                                       {"token_pool": "flatten", "token_dim": 24, "relation_heads": 3}])
def test_gradients_reach_every_parameter(overrides):
    model = build_model(tiny(**overrides), frames=2, joints=3)
    model(torch.randn(1, 2, 2, 3, 32, 32)).square().sum().backward()
    assert_gradients_reach_every_parameter(model, f"mpstr {overrides}")


def test_tiny_model_overfits_with_its_loss():
    torch.manual_seed(0)
    model = build_model(tiny(), frames=2, joints=3)
    loss_fn = build_loss("mpstr")
    batch = {"keypoints_2d": torch.rand(1, 2, 2, 3, 2) * 32, "mask": torch.ones(1, 2)}  # pixels of the crop
    x = torch.randn(1, 2, 2, 3, 32, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(200):
        loss, logs = loss_fn(forward_for_loss(model, x), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else logs["loss"]
    assert logs["loss"] < 0.03 * first, (first, logs)  # rmse ~18 px -> ~2 px


def test_config_validation_and_registry():
    cfg = parse_model_config({"name": "mpstr", "variant": "official", "depths": [2, 2], "num_heads": [2, 4],
                              "embed_dim": 16, "img_size": 32, "window_size": 4, "relation_heads": 4})
    assert cfg.depths == (2, 2) and cfg.variant == "official" and cfg.pretrained is None
    assert MPSTRConfig().variant == "paper" and MPSTRConfig().swin_width == 768
    assert "mpstr" in IMAGE_MODELS and "mpstr" not in MODELS  # keypoint tools iterate MODELS
    bad = [{"variant": "other"}, {"depths": [2, 2], "num_heads": [3]}, {"img_size": 30},
           {"variant": "official", "baseline": True}, {"variant": "official", "token_dim": 64},
           {"relation_heads": 7}, {"drop_path_rate": 1.0}, {"num_heads": [5, 6, 12, 24]}]
    for values in bad:
        with pytest.raises(ConfigError):
            parse_model_config({"name": "mpstr", **values})


def test_pretrained_swin_from_local_file(tmp_path):
    donor = build_model(tiny(), frames=1, joints=3)
    swin_state = donor.backbone.state_dict()
    # Microsoft's layout: downsample at the end of stage i, classifier `head`, index buffers.
    ms = {k.replace("layers.1.downsample", "layers.0.downsample"): v for k, v in swin_state.items()}
    ms["head.weight"], ms["head.bias"] = torch.zeros(10, 32), torch.zeros(10)
    for i, state in enumerate((swin_state, {"model": ms})):
        torch.save(state, tmp_path / f"swin{i}.pth")
        model = build_model(tiny(pretrained=str(tmp_path / f"swin{i}.pth")), frames=1, joints=3)
        for k, v in model.backbone.state_dict().items():
            assert torch.equal(v, swin_state[k]), k
    with pytest.raises(CheckpointError, match="missing"):
        torch.save({"norm.weight": swin_state["norm.weight"]}, tmp_path / "partial.pth")
        build_model(tiny(pretrained=str(tmp_path / "partial.pth")), frames=1, joints=3)
    with pytest.raises(CheckpointError, match="is not a file"):
        build_model(tiny(pretrained=str(tmp_path / "absent.pth")), frames=1, joints=3)
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="does not fit"):
        build_model(tiny(pretrained=str(tmp_path / "garbage.pth")), frames=1, joints=3)


def test_flatten_token_pool_projects_the_final_grid_and_is_validated():
    """`token_pool: flatten` (raylift's option): the final-stage grid is projected to the token,
    not averaged; it needs token_dim and is refused for the official variant."""
    torch.manual_seed(0)
    flat = build_model(tiny(token_pool="flatten", token_dim=24, relation_heads=3), frames=2, joints=3).eval()
    assert flat.token_proj.in_features == (16 * 2) * (32 // 4 // 2) ** 2  # swin width x final grid cells
    x = torch.randn(1, 2, 2, 3, 32, 32)
    assert flat(x).shape == (1, 2, 2, 3, 2)
    with pytest.raises(ValueError, match="token_pool: flatten needs token_dim"):
        MPSTRConfig(token_pool="flatten").validate()
    with pytest.raises(ValueError, match="official variant average-pools"):
        MPSTRConfig(variant="official", token_pool="flatten", token_dim=768).validate()
    with pytest.raises(ConfigError, match="token_pool"):
        parse_model_config({"name": "mpstr", "token_pool": "max"}, "model")
