"""Passes that may run a batch in pieces (issue 19): the eval-mode statistics pass and auto's scoring.

Eval-mode statistics and outputs do not depend on how samples are grouped, so those passes
run 16 samples at a time (a quarter of the memory, and faster); training-mode passes never
do (Algorithm 1 normalizes each batch with its own statistics).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import nabn_onnx as nb
from nabn_onnx.calibration import scoring
from nabn_onnx.calibration.config import Reading
from nabn_onnx.runtime import make_session
from nabn_onnx.settings import DataSettings

from builders import images, small_cnn

measure_module = sys.modules["nabn_onnx.calibration.measure"]  # the package exports a function of that name
SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
CALIB = SAMPLES / "digits_calib.npz"


def _exact(x: np.ndarray):
    """Per-channel mean and biased variance of an (N, C, ...) array, in float64."""
    x = np.moveaxis(x.astype(np.float64), 1, 0).reshape(x.shape[1], -1)
    return x.mean(axis=1), x.var(axis=1)


def test_pooled_pieces_are_the_statistics_of_the_whole_batch():
    rng = np.random.default_rng(0)
    batch = rng.normal(3.0, 2.0, (40, 5, 4, 4)) + np.arange(5)[None, :, None, None] * 1e3  # large means
    parts = []
    for lo in range(0, 40, 16):  # 16, 16, 8 samples
        piece = batch[lo : lo + 16]
        mean, var = _exact(piece)
        parts.append((mean, var, piece.shape[0] * 16))
    mean, var, count = measure_module._pooled(parts)
    expected_mean, expected_var = _exact(batch)
    assert count == 40 * 16
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-13)
    np.testing.assert_allclose(var, expected_var, rtol=1e-10)
    assert measure_module._pooled(parts[:1]) is parts[0]


def _tap_stats(monkeypatch, piece: int, **kwargs):
    model = nb.split(small_cnn(seed=3), None).model  # identity placeholders to tap
    names = [n.name for n in model.graph.node if n.op_type == "BatchNormalization"]
    runs = []
    real = make_session

    def counting(*args, **kw):
        session = real(*args, **kw)
        run = session.run

        def counted(fetch, feeds, *a):
            runs.append(next(iter(feeds.values())).shape[0])
            return run(fetch, feeds, *a)

        session.run = counted
        return session

    monkeypatch.setattr(measure_module, "make_session", counting)
    monkeypatch.setattr(measure_module, "TAP_PIECE", piece)
    data = {"input": images(96, seed=5)}
    stats = measure_module.collect_stats(model, data, Reading(data=DataSettings(48)), **kwargs)[0]
    return stats, runs, names


def test_the_eval_mode_statistics_pass_runs_in_pieces_to_the_same_statistics(monkeypatch):
    names = [n.name for n in nb.split(small_cnn(seed=3), None).model.graph.node if n.op_type == "BatchNormalization"]
    pieces, piece_runs, _ = _tap_stats(monkeypatch, 16, tap=names)
    whole, whole_runs, _ = _tap_stats(monkeypatch, 10**9, tap=names)
    assert whole_runs == [48, 48]
    assert piece_runs == [16] * 6
    for name in names:
        np.testing.assert_allclose(pieces[name][0], whole[name][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(pieces[name][1], whole[name][1], rtol=1e-5, atol=1e-7)


def test_training_mode_passes_always_run_whole_batches(monkeypatch):
    model = nb.split(small_cnn(seed=3), None).model
    names = [n.name for n in model.graph.node if n.op_type == "BatchNormalization"]
    small, small_runs, _ = _tap_stats(monkeypatch, 2, train=names)
    large, large_runs, _ = _tap_stats(monkeypatch, 10**9, train=names)
    assert small_runs == large_runs == [48, 48]
    for name in names:
        np.testing.assert_array_equal(small[name][0], large[name][0])
        np.testing.assert_array_equal(small[name][1], large[name][1])


def _io_model(input_axis: str, output_axis: str) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [input_axis or None, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [output_axis or None, 3])
    return helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]))


@pytest.mark.parametrize(
    ("input_axis", "output_axis", "piece"),
    [
        ("batch", "batch", scoring.SCORE_PIECE),  # PyTorch's dynamic_axes: the same name in and out
        ("p2o.DynamicDimension.0", "p2o.DynamicDimension.3", None),  # Paddle: another axis name out
        ("", "", None),  # unnamed: unknown
        ("batch", "boxes", None),  # a detector's kept boxes
    ],
)
def test_scoring_runs_pieces_only_where_every_output_is_per_sample(input_axis, output_axis, piece):
    assert scoring.batch_piece(_io_model(input_axis, output_axis)) == piece


def test_scored_pieces_give_the_outputs_of_the_whole_part():
    model = small_cnn(seed=1)
    session = make_session(model)
    feeds = {"input": images(40, seed=2)}
    whole = session.run(None, feeds)
    pieces = scoring.run_pieces(session, None, feeds, None, 16)
    assert [p.shape for p in pieces] == [w.shape for w in whole]
    for p, w in zip(pieces, whole):
        np.testing.assert_allclose(p, w, rtol=1e-6, atol=1e-7)
    assert scoring.run_pieces(session, None, feeds, None, None)[0].shape == whole[0].shape


def test_auto_scores_the_same_in_pieces(monkeypatch):
    """On the digits sample (batch axis named in and out), pieces change auto's scores by float rounding only."""
    noise = nb.make_noise("mul", 0.2, seed=1)
    pieces = nb.calibrate(SAMPLES / "mobilenet_fused.onnx", CALIB, noise=noise, max_batches=4)
    monkeypatch.setattr(scoring, "SCORE_PIECE", None)
    whole = nb.calibrate(SAMPLES / "mobilenet_fused.onnx", CALIB, noise=noise, max_batches=4)
    assert pieces.report.chosen == whole.report.chosen
    for name, value in whole.report.scores.items():
        assert pieces.report.scores[name] == pytest.approx(value, rel=1e-4, abs=1e-9)
