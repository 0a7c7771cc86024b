"""`raylift bench images`: the crop-throughput benchmark runs end to end on tiny inputs and reports
every figure, including the training rate of the two-stage demo's image model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.slow
def test_bench_images_reports_decode_render_build_and_training_rates(tmp_path, capsys):
    from pipelines.cli import main

    out = tmp_path / "images.json"
    assert main(["bench", "images", "--subjects", "2", "--frames", "8", "--size", "32", "--cpus", "1",
                 "--model-config", str(CONFIGS / "two_stage_synthetic.yaml"), "--steps", "1",
                 "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    for key in ("video_decode_crop_images_per_cpu_s", "synthetic_render_images_per_cpu_s", "build_images_per_s",
                "bytes_per_image"):
        assert figures[key] > 0, key
    training = figures["training"]
    assert training["model"] == "mpstr" and training["images_per_step"] > 0 and training["train_images_per_s"] > 0
    assert "images/s" in capsys.readouterr().out
