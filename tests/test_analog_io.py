"""The analog periphery as graph ops: DAC, output noise, ADC; numbers against numpy, removal,
and calibration of a model whose outputs are random per inference."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from nabn_onnx import NoiseConfigError, calibrate
from nabn_onnx.cli import main
from nabn_onnx.passes.analog_io import AnalogIO, InsertAnalogIOPass, StripAnalogIOPass, measure_input_ranges
from nabn_onnx.passes.write_stats import read_bn_params

from builders import images, run, small_cnn

#: Relative tolerance of a standard deviation estimated from ~10^5 normals (about 10 standard errors).
STD_RTOL = 0.03
#: Relative tolerance of a per-channel variance from 64 images x 8 x 8 positions (~6 standard errors).
VAR_RTOL = 0.2


def _gemm(seed=0, n_in=16, n_out=12):
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.5, (n_out, n_in)).astype(np.float32)
    b = rng.normal(0, 0.3, n_out).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1, beta=0.5)],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_out])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, w, b


def _quantize(x, bound, bits):
    step = np.float32(bound / (2 ** (bits - 1) - 1))
    return np.round(np.clip(x, np.float32(-bound), np.float32(bound)) / step) * step


def test_dac_and_adc_match_numpy():
    model, w, b = _gemm()
    x = np.random.default_rng(1).normal(0, 1, (256, 16)).astype(np.float32)
    x_max = float(np.abs(x).max())
    settings = AnalogIO(adc_bits=6, out_bound=1.5, dac_bits=4, inp_bound=0.5)
    result = InsertAnalogIOPass(settings, {"fc": x_max})(model)
    assert result.modified and result.details["layers"] == ["fc"]
    onnx.checker.check_model(model)
    (got,) = run(model, {"x": x})
    u = float(np.abs(w).max()) * x_max
    x_q = _quantize(x, 0.5 * x_max, 4)
    expected = _quantize(x_q @ w.T, 1.5 * u, 6) + 0.5 * b  # digital bias after the ADC, Gemm's beta folded in
    step = 1.5 * u / (2**5 - 1)
    close = np.isclose(got, expected, atol=1e-5)
    assert close.mean() > 0.999  # a float32 sum may fall on the other side of a rounding edge
    assert np.abs(got - expected).max() <= step * 1.001
    assert len(np.unique(np.round((got - 0.5 * b) / step))) <= 2**6 - 1


def test_output_noise_has_the_stated_spread_fresh_per_run_and_seeded():
    model, w, b = _gemm()
    x = np.random.default_rng(2).normal(0, 1, (8192, 16)).astype(np.float32)
    x_max = float(np.abs(x).max())
    InsertAnalogIOPass(AnalogIO(out_noise=0.05, seed=3), {"fc": x_max})(model)
    clean = x @ w.T + 0.5 * b
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    first, second = session.run(None, {"x": x})[0], session.run(None, {"x": x})[0]
    sigma = 0.05 * float(np.abs(w).max()) * x_max
    assert (first - clean).std() == pytest.approx(sigma, rel=STD_RTOL)
    assert abs((first - clean).mean()) < 5 * sigma / np.sqrt(first.size)
    assert not np.allclose(first, second)  # a new draw per inference
    again = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(again.run(None, {"x": x})[0], first)  # same seed, same sequence


@pytest.mark.parametrize("with_bn", [False, True])
def test_strip_gives_back_the_original_graph_and_insert_twice_does_nothing(with_bn):
    original = small_cnn(with_bn=with_bn)
    x = images(32)
    ranges = measure_input_ranges(original, {"input": x}, batch_size=16)
    assert ranges["conv1"] == pytest.approx(float(np.abs(x).max()))
    model = copy.deepcopy(original)
    first = InsertAnalogIOPass(AnalogIO(out_noise=0.05, adc_bits=8, dac_bits=6), ranges)(model)
    assert first.modified and len(first.details["layers"]) == 4
    assert sum(n.op_type == "RandomNormalLike" for n in model.graph.node) == 4
    assert not InsertAnalogIOPass(AnalogIO(out_noise=0.05), ranges)(model).modified
    stripped = StripAnalogIOPass()(model)
    assert stripped.modified
    assert model.graph.SerializeToString() == original.graph.SerializeToString()
    assert not StripAnalogIOPass()(model).modified


def test_calibration_pools_statistics_over_noise_draws():
    """With output noise of std s on conv1, the BatchNorm after it sees var_clean + s^2 per channel."""
    clean = small_cnn(with_bn=True)
    x = images(64, seed=4)
    ranges = measure_input_ranges(clean, {"input": x})
    noisy = copy.deepcopy(clean)
    InsertAnalogIOPass(AnalogIO(out_noise=0.2), ranges, include="^conv1$")(noisy)
    w1 = numpy_helper.to_array(next(t for t in clean.graph.initializer if t.name == "w1"))
    sigma = 0.2 * float(np.abs(w1).max()) * ranges["conv1"]
    data = {"input": x}
    clean_calibrated = calibrate(clean, data, method="paper", batch_size=16).model
    base = read_bn_params(clean_calibrated)["bn1"]
    pooled = read_bn_params(calibrate(noisy, data, method="paper", batch_size=16).model)["bn1"]
    np.testing.assert_allclose(pooled["var"], base["var"] + sigma**2, rtol=VAR_RTOL)
    np.testing.assert_allclose(pooled["mean"], base["mean"], atol=6 * sigma / np.sqrt(64 * 64))
    # the calibrated model keeps its periphery and strips back to the clean model's calibrated structure
    calibrated = calibrate(noisy, data, method="paper", batch_size=16).model
    assert sum(n.op_type == "RandomNormalLike" for n in calibrated.graph.node) == 1
    StripAnalogIOPass()(calibrated)
    assert [(n.op_type, list(n.input), list(n.output)) for n in calibrated.graph.node] == [
        (n.op_type, list(n.input), list(n.output)) for n in clean_calibrated.graph.node
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(adc_bits=1),
        dict(dac_bits=40),
        dict(out_noise=-1.0),
        dict(out_noise=0.1, out_bound=0.0),
        dict(out_noise=float("nan")),
    ],
)
def test_bad_settings(kwargs):
    with pytest.raises(NoiseConfigError):
        AnalogIO(**kwargs)


def test_cli_insert_and_strip(tmp_path, capsys):
    onnx.save(small_cnn(with_bn=True), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", input=images(32))
    assert (
        main(
            [
                "analog",
                str(tmp_path / "m.onnx"),
                "--data",
                str(tmp_path / "d.npz"),
                "--adc-bits",
                "8",
                "--out-noise",
                "0.06",
                "-o",
                str(tmp_path / "a.onnx"),
            ]
        )
        == 0
    )
    assert "4 analog layer(s)" in capsys.readouterr().out
    assert main(["analog", str(tmp_path / "a.onnx"), "--strip", "-o", str(tmp_path / "s.onnx")]) == 0
    assert onnx.load(tmp_path / "s.onnx").graph.SerializeToString() == small_cnn(with_bn=True).graph.SerializeToString()
    assert main(["analog", str(tmp_path / "m.onnx"), "--strip", "-o", str(tmp_path / "x.onnx")]) == 1
    assert "nothing to strip" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
