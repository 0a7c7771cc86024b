"""`raylift bench relations`: full vs masked vs no relations over seeds, validation-chosen checkpoints,
mean ± spread beside the mean pose."""
from __future__ import annotations

import json

import pytest
import yaml

from pipelines.bench.relations import VARIANTS, parse_seeds, summarise, table, variant_config
from tests.helpers import image_raw


def test_seeds_are_distinct_integers():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    for bad in ("", "0,0", "a,1"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


def test_each_variant_differs_only_in_its_switches_and_is_chosen_on_validation(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(image_raw(tmp_path)))
    configs = {v: variant_config(str(path), [], "exp", v, 3) for v in VARIANTS}
    assert {v: (c.model.masked_relations, c.model.baseline) for v, c in configs.items()} == {
        "full": (False, False), "masked": (True, False), "none": (False, True)}
    for variant, cfg in configs.items():
        assert (cfg.train.seed, cfg.train.select, cfg.name) == (3, "val", f"exp_{variant}_s3")
    a, b = (configs[v].to_dict() for v in ("full", "masked"))
    assert {k for k in a if a[k] != b[k]} == {"name", "model"}
    assert {k for k in a["model"] if a["model"][k] != b["model"][k]} == {"masked_relations"}


def test_summary_is_mean_and_sample_sd_over_seeds():
    runs = [{"variant": "full", "seed": s, "parameters": 10, "overall": {"pixel_error": e, "PCK@0.05": p, "AP": 0.5}}
            for s, e, p in ((0, 2.0, 0.5), (1, 4.0, 0.7))]
    summary = summarise(runs)
    assert summary["full"]["pixel_error"] == {"values": [2.0, 4.0], "mean": 3.0, "sd": pytest.approx(2 ** 0.5)}
    assert summary["full"]["PCK@0.05"]["mean"] == pytest.approx(60.0)  # percent
    text = table(summary, {"pixel_error": 5.0, "PCK@0.05": 0.25, "AP": 0.1})
    assert "3.00 ± 1.41" in text and "mean pose" in text and "2.00, 4.00" in text


@pytest.mark.slow
def test_bench_relations_end_to_end(tmp_path, ray_local, capsys):
    from pipelines.cli import main

    raw = image_raw(tmp_path, epochs=1)
    raw["data"]["source"]["synthetic"]["subjects"] = ["S1", "S5", "S9"]
    raw["data"]["source"]["val_subjects"] = ["S5"]
    path = tmp_path / "relations.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["bench", "relations", "--config", str(path), "--seeds", "0", "--out", str(tmp_path / "out")]) == 0
    body = json.loads((tmp_path / "out" / "relations.json").read_text())
    assert [r["variant"] for r in body["runs"]] == ["full", "masked", "none"]
    full, masked, none = (r["parameters"] for r in body["runs"])
    assert full == masked > none  # the control keeps every parameter
    assert "S5" in body["protocol"] and "S9" in body["protocol"] and "mean pose" in capsys.readouterr().out
    assert (tmp_path / "out" / "relations.md").read_text().count("±") >= 9
