"""Paper protocols (pipelines/evaluate/protocol_defs.py) on constructed test splits, against values
computed by hand the way each paper's code computes them."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.config import config_from_dict
from pipelines.evaluate import protocol_defs, results, scoring
from preprocessing.errors import DataError
from preprocessing.schema import ConfigError
from preprocessing.skeleton import H36M17, MPI17
from tests.helpers import DepthlessLift, eval_sequence, windows_of


def test_mixste_windows_start_at_zero_and_end_flush():
    assert protocol_defs.mixste_window_frames(10, 4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [6, 7, 8, 9]]
    assert protocol_defs.mixste_window_frames(8, 4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert protocol_defs.mixste_window_frames(3, 5).tolist() == [[0, 1, 2, 2, 2]]  # replicate-padded
    assert protocol_defs.stride1_window_frames(3, 3).tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 2]]


SEQS = [("S9", "Walking 1", "54138969", 10, 1), ("S11", "Walking", "55011271", 7, 2), ("S9", "Eating", "54138969", 5, 3)]


def _seqs():
    return [eval_sequence(s, a, c, n, seed=k) for s, a, c, n, k in SEQS]


def test_mixste_protocol_counts_overlaps_as_the_code_does():
    test = windows_of(_seqs(), frames=4, flipped_copies=True)
    summary = protocol_defs.evaluate_protocol(DepthlessLift(), test, H36M17, "mixste", frames=4)
    # DepthlessLift's error at frame t is 10 t mm on 16 of 17 joints. Window frames per sequence:
    # N=10 -> 0..7 + 6..9; N=7 -> 0..3 + 3..6; N=5 -> 0..3 + 1..4.
    streams = {"Walking": [list(range(8)) + list(range(6, 10)), list(range(4)) + list(range(3, 7))],
               "Eating": [list(range(4)) + list(range(1, 5))]}
    err = {a: [10.0 * t * 16 / 17 for s in v for t in s] for a, v in streams.items()}
    assert summary["groups"]["Walking"]["mpjpe"] == pytest.approx(np.mean(err["Walking"]), rel=1e-5)
    assert summary["groups"]["Walking"]["frames"] == 12 + 8
    assert summary["group_mean"]["mpjpe"] == pytest.approx((np.mean(err["Walking"]) + np.mean(err["Eating"])) / 2, rel=1e-5)
    # MPJVE over the concatenated window frames: steps of +1 frame err 10 mm; joins jump back.
    def stream_vel(s):
        return np.mean([abs(b - a) * 10.0 * 16 / 17 for a, b in zip(s[:-1], s[1:])])
    walking = [stream_vel(s) for s in streams["Walking"]]
    expected = (walking[0] * 12 + walking[1] * 8) / 20
    assert summary["groups"]["Walking"]["mpjve"] == pytest.approx(expected, rel=1e-5)
    # raylift's protocol on the same split counts each real frame once: a different number
    raylift = scoring.evaluate_arrays(DepthlessLift(), test, "mem://h", H36M17, flip=True)
    assert raylift["results"]["model"]["groups"]["Walking"]["frames"] == 17
    result = scoring.evaluate_arrays(DepthlessLift(), test, "mem://h", H36M17, flip=True, protocol="mixste",
                                       labels={"checkpoint": "last epoch"})
    assert result["protocol_spec"]["name"] == "mixste" and result["protocol_spec"]["checkpoint"] == "last epoch"
    assert "counts twice" in result["protocol_spec"]["frames_counted"]
    assert "mixste" in results.results_markdown(result)


def test_videopose3d_seq2frame_weights_sequence_mpjve_by_frames():
    test = windows_of(_seqs(), frames=3, mode="seq2frame")
    summary = protocol_defs.evaluate_protocol(DepthlessLift(seq2frame=True), test, H36M17,
                                              "videopose3d_seq2frame", frames=3)
    raylift = scoring.evaluate_arrays(DepthlessLift(seq2frame=True), test, "mem://h", H36M17)["results"]["model"]
    assert summary["group_mean"]["mpjpe"] == pytest.approx(raylift["group_mean"]["mpjpe"], rel=1e-6)
    assert summary["groups"]["Walking"]["frames"] == 17
    # every step errs 10*16/17 mm, so each sequence's mean is that, whatever the weights
    assert summary["groups"]["Walking"]["mpjve"] == pytest.approx(10.0 * 16 / 17, rel=1e-5)


def test_protocol_choice_is_validated():
    with pytest.raises(ConfigError, match="eval.protocol 'videopose3d_seq2frame' scores seq2frame"):
        config_from_dict({"model": {"name": "mixste"}, "eval": {"protocol": "videopose3d_seq2frame"}})
    with pytest.raises(ConfigError, match="protocol"):
        config_from_dict({"model": {"name": "mixste"}, "eval": {"protocol": "h36m"}})
    seqs = [eval_sequence("TS1", "TS1", "0", 6, layout=MPI17)]
    with pytest.raises(DataError, match="MPI-INF-3DHP uses 'raylift'"):
        protocol_defs.evaluate_protocol(DepthlessLift(), windows_of(seqs, 3), MPI17, "mixste", frames=3)
