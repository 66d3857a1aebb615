"""Calibration against an independent numpy reference, estimators, fusion, dynamic sessions."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from nabn_onnx import (
    DataError,
    Estimator,
    NabnError,
    NabnSession,
    NothingToDoError,
    TemporalNoise,
    calibrate,
    make_noise,
    split,
)
from nabn_onnx.calibration import SEVERE, pick_candidate
from nabn_onnx.model import read_record

from builders import images, run, small_cnn

#: float32 activations against a float64 numpy reference.
STATS_RTOL = 1e-4
EPS = 1e-5


def _two_layer(with_bn: bool, seed: int = 0):
    """x(N,3,4,4) -> Conv1x1 -> [BN] -> Relu -> Conv1x1 -> [BN] -> out; and its parameters."""
    rng = np.random.default_rng(seed)
    p = {
        "w1": rng.normal(0, 1, (5, 3, 1, 1)).astype(np.float32),
        "w2": rng.normal(0, 1, (4, 5, 1, 1)).astype(np.float32),
        "g1": rng.uniform(0.5, 1.5, 5).astype(np.float32),
        "b1": rng.normal(0, 0.3, 5).astype(np.float32),
        "m1": rng.normal(0, 1, 5).astype(np.float32),
        "v1": rng.uniform(0.5, 2, 5).astype(np.float32),
        "g2": rng.uniform(0.5, 1.5, 4).astype(np.float32),
        "b2": rng.normal(0, 0.3, 4).astype(np.float32),
        "m2": rng.normal(0, 1, 4).astype(np.float32),
        "v2": rng.uniform(0.5, 2, 4).astype(np.float32),
    }
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1")]
    src = "c1"
    if with_bn:
        nodes.append(
            helper.make_node("BatchNormalization", ["c1", "g1", "b1", "m1", "v1"], ["n1"], name="bn1", epsilon=EPS)
        )
        src = "n1"
    nodes += [helper.make_node("Relu", [src], ["r1"]), helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2")]
    src = "c2"
    if with_bn:
        nodes.append(
            helper.make_node("BatchNormalization", ["c2", "g2", "b2", "m2", "v2"], ["out"], name="bn2", epsilon=EPS)
        )
    else:
        nodes.append(helper.make_node("Identity", ["c2"], ["out"]))
    names = ["w1", "w2"] + (["g1", "b1", "m1", "v1", "g2", "b2", "m2", "v2"] if with_bn else [])
    graph = helper.make_graph(
        nodes,
        "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 4, 4])],
        [numpy_helper.from_array(p[n], n) for n in names],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    return model, p


def _reference(p, batches, estimator: Estimator, w1=None, w2=None):
    """Train-mode statistics of bn1 and bn2 inputs, computed in float64 numpy."""
    w1 = (p["w1"] if w1 is None else w1).astype(np.float64)[:, :, 0, 0]
    w2 = (p["w2"] if w2 is None else w2).astype(np.float64)[:, :, 0, 0]
    acc = {"bn1": estimator.new(), "bn2": estimator.new()}
    for x in batches:
        y1 = np.einsum("oc,nchw->nohw", w1, x.astype(np.float64))
        m, v = y1.mean((0, 2, 3)), y1.var((0, 2, 3))
        acc["bn1"].update(m, v, y1.size // y1.shape[1])
        z = (y1 - m[:, None, None]) / np.sqrt(v[:, None, None] + EPS) * p["g1"][:, None, None] + p["b1"][:, None, None]
        y2 = np.einsum("oc,nchw->nohw", w2, np.maximum(z, 0))
        acc["bn2"].update(y2.mean((0, 2, 3)), y2.var((0, 2, 3)), y2.size // y2.shape[1])
    return {k: a.result() for k, a in acc.items()}


def _bn_values(model, name):
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    node = next(n for n in model.graph.node if n.name == name)
    return inits[node.input[3]], inits[node.input[4]]


@pytest.mark.parametrize(
    "estimator",
    [
        Estimator(),
        Estimator(variance="mean"),
        Estimator(unbiased=False),
        Estimator(kind="ema", momentum=0.9),
        Estimator(kind="ema", variance="mean"),
    ],
)
@pytest.mark.parametrize("noisy", [False, True])
def test_train_mode_statistics_match_numpy(estimator, noisy):
    model, p = _two_layer(with_bn=True)
    x = np.random.default_rng(3).normal(size=(96, 3, 4, 4)).astype(np.float32)
    noise = make_noise("mul", 0.3, seed=4) if noisy else None
    result = calibrate(model, {"x": x}, noise=noise, estimator=estimator, batch_size=32, method="paper")
    w1 = noise.apply("w1", p["w1"]) if noisy else None
    w2 = noise.apply("w2", p["w2"]) if noisy else None
    expected = _reference(p, [x[i : i + 32] for i in range(0, 96, 32)], estimator, w1, w2)
    for bn in ("bn1", "bn2"):
        mean, var = _bn_values(result.model, bn)
        np.testing.assert_allclose(mean, expected[bn][0], rtol=STATS_RTOL, atol=STATS_RTOL)
        np.testing.assert_allclose(var, expected[bn][1], rtol=STATS_RTOL, atol=STATS_RTOL)
    assert result.report.batches == 3 and result.report.samples == 96


def test_running_stats_against_numpy():
    rng = np.random.default_rng(0)
    data = rng.normal(2.0, 3.0, size=(10, 50, 4))  # 10 batches, 50 samples, 4 channels
    total = Estimator(variance="total", unbiased=False).new()
    mean_of_vars = Estimator(variance="mean", unbiased=True).new()
    ema = Estimator(kind="ema", momentum=0.9, variance="mean", unbiased=False).new()
    expected_ema = None
    for batch in data:
        for acc in (total, mean_of_vars, ema):
            acc.update(batch.mean(0), batch.var(0), len(batch))
        stats = np.stack([batch.mean(0), batch.var(0)])
        expected_ema = stats if expected_ema is None else 0.9 * expected_ema + 0.1 * stats
    everything = data.reshape(-1, 4)
    np.testing.assert_allclose(total.result()[0], everything.mean(0), rtol=1e-12)
    np.testing.assert_allclose(total.result()[1], everything.var(0), rtol=1e-12)
    np.testing.assert_allclose(mean_of_vars.result()[1], np.mean([b.var(0, ddof=1) for b in data], 0), rtol=1e-12)
    np.testing.assert_allclose(np.stack(ema.result()), expected_ema, rtol=1e-12)


def test_fused_model_calibrated_without_noise_keeps_its_outputs():
    model = small_cnn()
    x = images(256)
    before = run(model, {"input": x})[0]
    scale = np.abs(before).max()
    no_noise = make_noise("mul", 0.0, seed=0)  # a chip identical to the clean model
    delta = calibrate(model, {"input": x}, method="delta", noise=no_noise).model
    np.testing.assert_allclose(run(delta, {"input": x})[0], before, rtol=0, atol=1e-6 * scale)
    paper = calibrate(model, {"input": x}, method="paper", noise=no_noise).model
    # Algorithm 1 re-estimates with train-mode batch statistics: close, not bit-equal.
    np.testing.assert_allclose(run(paper, {"input": x})[0], before, rtol=0, atol=0.01 * scale)


def test_calibrated_model_is_plain_onnx_and_fuses_conv_batchnorm(tmp_path):
    model = small_cnn()
    result = calibrate(model, {"input": images(128)}, noise=make_noise("mul", 0.1, seed=1))
    onnx.checker.check_model(result.model, full_check=True)
    provenance = read_record(result.model, "calibrate")
    assert provenance["method"] == "auto" and provenance["chosen"] in ("delta", "blend", "paper")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(result.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    ops = [n.op_type for n in optimized.graph.node]
    # Every BatchNormalization after a Conv is folded away; only the one after Gemm remains.
    assert sum(op == "BatchNormalization" for op in ops) == 1
    assert sum(n.op_type == "BatchNormalization" for n in result.model.graph.node) == 4


def test_calibration_recovers_a_collapsed_model():
    """A smaller version of the sample-model check: the noisy model is pulled back to the clean one."""
    model = small_cnn(channels=16)
    x = images(512)
    clean = run(model, {"input": x})[0].argmax(1)
    noise = make_noise("mul", 0.6, seed=2)
    from nabn_onnx import inject

    vanilla = run(inject(model, noise).model, {"input": x})[0].argmax(1)
    nabn = run(calibrate(model, {"input": x[:256]}, noise=noise).model, {"input": x})[0].argmax(1)
    agree_vanilla = (vanilla[256:] == clean[256:]).mean()
    agree_nabn = (nabn[256:] == clean[256:]).mean()
    assert agree_nabn > agree_vanilla + 0.1, (agree_vanilla, agree_nabn)


def test_data_errors_are_one_line():
    model = small_cnn()
    chip = make_noise("mul", 0.1, seed=0)
    with pytest.raises(DataError, match="do not match"):
        calibrate(model, {"image": images(8), "other": images(8)}, noise=chip)
    bad = images(16)
    bad[3, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        calibrate(model, {"input": bad}, noise=chip)
    with pytest.raises(DataError, match="at least 2"):
        calibrate(model, [{"input": images(1)}, {"input": images(4)}, {"input": images(4)}], noise=chip)
    with pytest.raises(DataError, match="no samples"):
        calibrate(model, [], noise=chip)
    with pytest.raises(DataError, match="expects"):
        calibrate(model, {"input": images(8, size=6)}, noise=chip)


def test_model_without_anything_to_calibrate():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(NothingToDoError, match="no BatchNormalization"):
        calibrate(model, {"x": np.ones((2, 3), np.float32)})


def test_calibration_data_reader_is_accepted():
    class Reader:
        def __init__(self, arrays):
            self.it = iter(arrays)

        def get_next(self):
            return next(self.it, None)

    model = small_cnn()
    x = images(128)
    chip = make_noise("mul", 0.2, seed=0)
    from_reader = calibrate(model, Reader([{"input": x[i : i + 32]} for i in range(0, 128, 32)]), noise=chip).model
    from_dict = calibrate(model, {"input": x}, batch_size=32, noise=chip).model
    np.testing.assert_array_equal(
        _bn_values(from_reader, "conv2/nabn_bn")[0], _bn_values(from_dict, "conv2/nabn_bn")[0]
    )


def test_dynamic_session_serves_like_the_static_model_then_tracks():
    model = small_cnn()
    x = images(512)
    static = split(model, {"input": x[:256]}).model  # inserted BatchNorms with measured clean statistics
    session = NabnSession(static, momentum=0.5)
    first = session.run(None, {"input": x[256:320]})[0]
    np.testing.assert_allclose(first, run(static, {"input": x[256:320]})[0], rtol=1e-5, atol=1e-5)
    before = session.statistics()["conv1/nabn_bn"][0].copy()
    shifted = x[320:384] + 1.0  # a brighter stream moves the first layer's mean
    for _ in range(10):
        session.run(None, {"input": shifted})
    after = session.statistics()["conv1/nabn_bn"][0]
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w1"))
    expected_move = w.sum(axis=(1, 2, 3))  # +1 on every pixel adds sum(W) to the mean (interior pixels)
    assert np.corrcoef(after - before, expected_move)[0, 1] > 0.9
    assert NabnSession(static, update=False).run(None, {"input": shifted})[0].shape == (64, 10)


def test_temporal_noise_redraws_weights_without_rebuilding_the_session():
    static = split(small_cnn(), {"input": images(128)}).model
    session = NabnSession(static, update=False, noise=TemporalNoise(make_noise("mul", 0.3, seed=1)))
    x = images(32)
    a, b = session.run(None, {"input": x})[0], session.run(None, {"input": x})[0]
    assert not np.allclose(a, b)
    drifting = NabnSession(static, update=False, noise=TemporalNoise(make_noise("mul", 0.3, seed=1), lambda k: 0.0))
    np.testing.assert_allclose(drifting.run(None, {"input": x})[0], run(static, {"input": x})[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_bn", [False, True])
@pytest.mark.parametrize("method", ["auto", "delta"])
def test_noise_free_auto_and_delta_change_no_output_bit_for_bit(method, with_bn):
    model = small_cnn(with_bn=with_bn)
    x = images(256)
    result = calibrate(model, {"input": x}, method=method, batch_size=32, noise=make_noise("mul", 0.0, seed=0))
    np.testing.assert_array_equal(run(result.model, {"input": x})[0], run(model, {"input": x})[0])
    if method == "auto":
        assert result.report.chosen == "delta" and result.report.scores["delta"] == 0.0
        assert set(result.report.scores) == {"delta", "blend", "paper", "none"}


def test_auto_scores_candidates_on_held_out_samples():
    from nabn_onnx.calibration import holdout_split
    from nabn_onnx.data import Batch

    fit, held = holdout_split(Batch({"input": np.arange(64.0)[:, None]}, np.arange(64)))
    assert fit.size == 48 and held.size == 16 and held.feeds["input"][0, 0] == 48 and held.labels[-1] == 63
    assert holdout_split(Batch({"input": np.zeros((7, 1))}, None))[1] is None  # 1 sample held: no variance
    model = small_cnn()
    result = calibrate(model, {"input": images(512)}, method="auto", noise=make_noise("mul", 0.8, seed=0))
    assert result.report.scored_on == 8 * 16 and not result.report.in_sample
    scores = result.report.scores
    assert min(scores.values()) <= SEVERE  # strong but not severe noise: the score decides
    assert result.report.chosen == min(scores, key=scores.get)
    assert all(v > 0 for v in scores.values())


def test_pick_candidate_falls_back_to_the_paper_under_severe_noise():
    assert pick_candidate({"delta": 0.1, "blend": 0.2, "paper": 0.3}) == "delta"
    assert pick_candidate({"delta": 0.2, "blend": 0.2, "paper": 0.2}) == "delta"  # ties: earlier entry
    assert pick_candidate({"delta": 0.4, "blend": 0.3, "paper": 0.45}) == "blend"
    assert pick_candidate({"delta": SEVERE + 0.1, "blend": 0.9, "paper": 1.2}) == "paper"


def test_output_divergence():
    from nabn_onnx.calibration import OutputDivergence

    logits = np.random.default_rng(0).normal(size=(16, 5)).astype(np.float32)
    same = OutputDivergence()
    same.update([logits], [logits])
    assert same.result() == 0.0
    far, near = OutputDivergence(), OutputDivergence()
    far.update([logits], [logits[:, ::-1]])
    near.update([logits], [logits * 1.01])
    assert far.result() > near.result() > 0
    maps = np.random.default_rng(1).normal(size=(2, 3, 4, 4))
    meter = OutputDivergence()
    meter.update([maps], [maps + 0.1])
    assert meter.result() == pytest.approx(0.01 * maps.size / np.sum((maps - maps.mean()) ** 2))


def test_dynamic_session_refuses_to_compound_simulated_noise():
    noisy = calibrate(small_cnn(), {"input": images(64)}, noise=make_noise("mul", 0.1, seed=0)).model
    with pytest.raises(NabnError, match="already carries injected noise"):
        NabnSession(noisy, noise=TemporalNoise(make_noise("mul", 0.1, seed=0)))


def test_renamed_measure_inserted_still_imports_with_a_warning():
    import nabn_onnx.calibration as calibration

    with pytest.warns(DeprecationWarning, match="renamed fill_inserted_stats"):
        old = calibration.measure_inserted
    assert old is calibration.fill_inserted_stats
    with pytest.raises(AttributeError):
        calibration.no_such_name  # noqa: B018


def test_the_sweep_cache_entry_matches_only_the_very_objects_it_was_measured_on():
    from nabn_onnx.calibration import CleanRun

    model, data = small_cnn(), {"input": images(8)}
    entry = CleanRun(model, data, None, None)
    assert CleanRun.key(model, data) == (id(model), id(data))
    assert entry.matches(model, data)
    assert not entry.matches(small_cnn(), data) and not entry.matches(model, dict(data))
