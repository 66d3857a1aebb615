"""nabn_onnx.analog: the library call behind ``nabn-onnx analog`` (numbers, not exit codes)."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from nabn_onnx.analog import insert_analog_io, strip_analog_io
from nabn_onnx.errors import NabnError
from nabn_onnx.passes.analog_io import PREFIX, AnalogIO

from builders import run

#: Absolute tolerance of a float32 output against its numpy reference.
ATOL = 1e-5
#: Share of outputs that must match exactly: a float32 sum may fall on the other side of a rounding edge.
MATCH_SHARE = 0.999


def _gemm(seed=0, n_in=16, n_out=12):
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.5, (n_out, n_in)).astype(np.float32)
    b = rng.normal(0, 0.3, n_out).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)],
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


def _batches(seed=1, n=4, size=32):
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0, 1, (size, 16)).astype(np.float32)} for _ in range(n)]


def test_insert_measures_ranges_on_the_data_and_matches_numpy(tmp_path):
    model, w, b = _gemm()
    data = _batches()
    x_max = max(float(np.abs(batch["x"]).max()) for batch in data)
    settings = AnalogIO(adc_bits=6, out_bound=1.5, dac_bits=4, inp_bound=0.5)
    result = insert_analog_io(model, data, settings, batch_size=32, max_batches=None, output=tmp_path / "a.onnx")
    assert result.modified and result.details["layers"] == ["fc"]
    saved = onnx.load(str(tmp_path / "a.onnx"))
    assert any(node.name.startswith(PREFIX) for node in saved.graph.node)
    x = np.concatenate([batch["x"] for batch in data])
    (got,) = run(saved, {"x": x})
    u = float(np.abs(w).max()) * x_max
    expected = _quantize(_quantize(x, 0.5 * x_max, 4) @ w.T, 1.5 * u, 6) + b
    assert np.isclose(got, expected, atol=ATOL).mean() > MATCH_SHARE
    assert np.abs(got - expected).max() <= 1.5 * u / (2**5 - 1) * 1.001


def test_strip_gives_back_the_original_graph(tmp_path):
    model, _, _ = _gemm()
    original = copy.deepcopy(model)
    insert_analog_io(model, _batches(), AnalogIO(out_noise=0.06, adc_bits=8), output=tmp_path / "a.onnx")
    result = strip_analog_io(str(tmp_path / "a.onnx"), output=tmp_path / "s.onnx")
    assert result.modified and result.details["layers"] == ["fc"]
    stripped = onnx.load(str(tmp_path / "s.onnx"))
    assert stripped.graph.SerializeToString() == original.graph.SerializeToString()
    x = _batches(seed=5)[0]["x"]
    (clean,) = run(original, {"x": x})
    (back,) = run(stripped, {"x": x})
    np.testing.assert_array_equal(back, clean)


def test_refuses_when_nothing_happens(tmp_path):
    model, _, _ = _gemm()
    with pytest.raises(NabnError, match="carries no analog periphery ops"):
        strip_analog_io(model, output=tmp_path / "s.onnx")
    with pytest.raises(NabnError, match="no analog layer to put the periphery around"):
        insert_analog_io(model, _batches(), AnalogIO(adc_bits=8), exclude="fc", output=tmp_path / "a.onnx")
    assert not list(tmp_path.iterdir())  # a refusal leaves no file
