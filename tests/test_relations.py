"""The image-relations module helps under occlusion because images see each other (Table I's claim).

Real renders (preprocessing/images/render.py) with an occluding object on half the images, two
training subjects (S1, S5) and the held-out S9. The full model and its control with the very
same parameters, `masked_relations: true` (the relations module's attention masked so each image
attends only to itself), train from the same initial weights, data order and steps with the
model's own loss, then are scored on every S9 image. What differs is only whether information
passes between the frames and views of a window: the mechanism, not the capacity. The
multi-seed experiment with Ray Train and validation-chosen checkpoints is `raylift bench
relations` (README); this is its CPU check (32-px crops, 800 steps of 4 windows).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.losses import build_loss, forward_for_loss
from models.mpstr import MPSTRConfig
from models.registry import build_model
from preprocessing.config import DataConfig, ImagesConfig, SourceConfig, SyntheticConfig
from preprocessing.images.readers import decode_rows
from preprocessing.images.dataset import ImageJob, piece_rows, rows_table
from preprocessing.images.sources import load_image_sequences

SIZE, FRAMES, VIEWS = 32, 8, 4


def occluded_windows(tmp) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """split -> (images (N, f, V, 3, H, W) in [0, 1], keypoints (N, f, V, J, 2) crop pixels)."""
    synthetic = SyntheticConfig(subjects=["S1", "S5", "S9"], actions_per_subject=2, frames_per_action=192,
                                out_dir=str(tmp / "synthetic"))
    data = DataConfig(source=SourceConfig(kind="synthetic_images", synthetic=synthetic),
                      images=ImagesConfig(size=SIZE, frames=FRAMES, views=VIEWS, occluder_prob=0.5, noise_std=4.0,
                                          blur_px=0.5))
    job = ImageJob("synthetic_images", data.images, 0)
    parts: dict[str, list] = {"train": [], "test": []}
    for seq in load_image_sequences(data).sequences:
        table = rows_table([piece_rows(seq, 0, seq.num_frames // FRAMES, job)])  # a shard's rows, as written
        rows = decode_rows(table, SIZE, VIEWS, flip=False, seed=0, perm=np.arange(17), where=seq.subject)  # as read
        parts["test" if seq.subject == "S9" else "train"].append((rows["images"], rows["keypoints"]))
    return {k: (torch.from_numpy(np.concatenate([x for x, _ in v])), torch.from_numpy(np.concatenate([y for _, y in v])))
            for k, v in parts.items()}


def train_and_score(masked: bool, windows, steps: int = 800, batch: int = 4, seed: int = 0) -> float:
    """Mean held-out joint error (crop pixels) after `steps` AdamW steps (paper lr and decay)."""
    torch.manual_seed(seed)  # the same initial weights for both: the masked model has the same parameters
    cfg = MPSTRConfig(img_size=SIZE, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4, token_dim=64,
                      token_pool="flatten", relation_depth=1, relation_heads=4, views=VIEWS, drop_path_rate=0.0,
                      relation_drop_path_rate=0.0, masked_relations=masked)
    model = build_model(cfg, frames=FRAMES, joints=17)
    loss_fn = build_loss("mpstr")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=steps, pct_start=0.1)  # warm-up + cosine
    order = torch.Generator().manual_seed(seed)
    x, y = windows["train"]
    for _ in range(steps):
        idx = torch.randint(len(x), (batch,), generator=order)
        loss, _ = loss_fn(forward_for_loss(model, x[idx]), {"keypoints_2d": y[idx], "mask": torch.ones(batch, FRAMES)})
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    model.eval()
    tx, ty = windows["test"]
    with torch.no_grad():
        pred = torch.cat([model(tx[i:i + 8]) for i in range(0, len(tx), 8)])
    return float((pred - ty).norm(dim=-1).mean())


def _score_on_one_thread(masked: bool, windows) -> float:
    torch.set_num_threads(1)  # each of the two runs gets one of the machine's cores
    return train_and_score(masked, windows)


@pytest.mark.slow
def test_relations_beat_the_same_module_masked_on_a_held_out_subject_with_occlusions(tmp_path):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    windows = occluded_windows(tmp_path)
    assert windows["test"][0].shape == (48, FRAMES, VIEWS, 3, SIZE, SIZE)
    train_y, test_y = windows["train"][1], windows["test"][1]
    mean_pose = float((train_y.mean((0, 1, 2)) - test_y).norm(dim=-1).mean())
    # The two trainings are independent (same seed, same data order): one process each.
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        masked, full = pool.map(_score_on_one_thread, [True, False], [windows, windows])
    assert full < 0.95 * masked, (full, masked, mean_pose)
    assert full < 0.95 * mean_pose, (full, mean_pose)
