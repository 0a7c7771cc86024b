"""The `raylift preprocess` summary: keypoint and image datasets share one frame of lines."""
from __future__ import annotations

from types import SimpleNamespace

from pipelines.data.preprocess import image_summary_lines, summary_lines


def _info(manifest: dict, cached: bool = False) -> SimpleNamespace:
    return SimpleNamespace(id="abc123", uri="/data/abc123", cached=cached, manifest=manifest)


def test_keypoint_summary_lists_train_first_and_bytes_per_window():
    m = {"source": {"kind": "synthetic", "layout": "h36m", "joints": 17},
         "windows": {"mode": "seq2seq", "frames": 27, "stride": 27, "flip": True, "multiview": False},
         "splits": {"test": {"windows": 10, "flipped": 0, "masked_frames": 270, "shards": 1, "bytes": 1e6},
                    "train": {"windows": 30, "flipped": 15, "masked_frames": 405, "shards": 2, "bytes": 3e6}},
         "total_bytes": 4e6, "build_seconds": 2.5}
    lines = summary_lines(_info(m), 3.0)
    assert lines[0] == "dataset   abc123" and lines[1] == "uri       /data/abc123"
    assert lines[2] == "source    synthetic (h36m, 17 joints)"
    assert lines[3] == "windows   seq2seq, T=27, stride 27, flip true"
    assert lines[4].startswith("train     30 windows (15 flipped)") and lines[5].startswith("test      10 windows")
    assert lines[6] == "total     4.0 MB, 100000 bytes/window"
    assert lines[7] == "time      3.0 s (build 2.5 s)"
    assert summary_lines(_info(m, cached=True), 0.1)[0].endswith("(cache hit: already built)")


def test_image_summary_names_views_crops_and_skipped_sequences():
    m = {"source": {"kind": "synthetic_images", "layout": "h36m", "joints": 17}, "cameras": ["54138969", "55011271"],
         "windows": {"frames": 8, "views": 2, "size": 48, "format": "jpeg", "flip": False},
         "splits": {"train": {"windows": 4, "images": 64, "sequences": 2, "shards": 1, "bytes": 2e5}},
         "skipped": ["S1 Walk: camera 3 missing"], "total_bytes": 2e5, "bytes_per_image": 3125.0, "build_seconds": 1.0}
    lines = image_summary_lines(_info(m, cached=True), 0.2)
    assert lines[2].endswith("cameras 54138969,55011271")
    assert lines[3] == "windows   f=8 frames x V=2 views, 48x48 jpeg crops, flip false"
    assert lines[5] == "skipped   1 sequence(s): S1 Walk: camera 3 missing"
    assert lines[6] == "total     0.2 MB, 3125 bytes/image" and lines[7] == "time      0.2 s"
