"""`raylift export`: the exported ONNX / TorchScript lifter gives PyTorch's numbers (<= 1e-4)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.checkpoint import load_model
from pipelines.cli import main
from pipelines.models.export import MAX_ABS_DIFF, example_windows
from tests.helpers import tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.mark.parametrize("fmt, suffix", [("onnx", ".onnx"), ("torchscript", ".pt")])
def test_export_matches_pytorch_on_windows_it_never_saw(fmt, suffix, tmp_path, checkpoint, capsys):
    out = tmp_path / "exported" / "lifter"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--output", str(out)]) == 0
    path = out.with_name("lifter" + suffix)
    printed = capsys.readouterr().out
    assert f"to {path}: max |{fmt} - PyTorch|" in printed
    info = json.loads(path.with_name(path.name + ".json").read_text())
    assert info["check"]["max_abs_diff"] <= MAX_ABS_DIFF and info["frames"] == 27 and info["output_mode"] == "seq2seq"
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, path.name + ".json"])
    # A batch size and values the export never saw.
    model, meta = load_model(checkpoint)
    x = example_windows(meta, 5, seed=42) * 0.5
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    if fmt == "onnx":
        import onnxruntime as ort

        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"keypoints_2d": x})[0]
    else:
        with torch.no_grad():
            got = torch.jit.load(str(path))(torch.from_numpy(x)).numpy()
    assert got.shape == (5, 27, 17, 3)
    assert float(np.abs(got - expected).max()) <= MAX_ABS_DIFF


def test_export_of_a_missing_checkpoint_is_one_line_and_writes_nothing(tmp_path, capsys):
    rc = main(["export", "--checkpoint", str(tmp_path / "none"), "--format", "onnx", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("raylift export: error:")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_bench_infer_reports_every_runtime(checkpoint, capsys):
    assert main(["bench", "infer", "--checkpoint", str(checkpoint), "--frames", "60", "--repeats", "1",
                 "--steps", "3", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    assert "mixste (T=27, seq2seq) on CPU" in out and "pose lag 0 frame(s)" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[3:] if line.strip()}
    assert set(rows) == {"pytorch", "torchscript", "onnx"}
    assert all(float(v.replace(",", "")) > 0 for cells in rows.values() for v in cells)
    assert main(["bench", "infer", "--checkpoint", str(checkpoint), "--runtimes", "tensorrt"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--runtimes 'tensorrt': expected some of pytorch, torchscript, onnx" in err
