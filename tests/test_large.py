"""A larger model end to end: a quarter-width ResNet-50 (about 7 MB of weights) stored with
external data goes through split, inject and calibrate, and the outputs are written with
external data when asked (``--external-data``), inline otherwise.

The full-size benchmark (time and peak memory against ``onnx.load`` + ``onnx.save``) is
``python -m tools.bench.bench_large``; tests do not time things.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import external_data_helper, numpy_helper

from nabn_onnx import load_model, save_model
from nabn_onnx.cli import main
from nabn_onnx.model import serialize_model

from builders import build_resnet50, weight_bytes

WIDTH = 0.25
IMAGE = 32
#: A split model computes the same function (placeholder BatchNorms are exact identities).
SPLIT_ATOL = 0.0


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """The model saved with external data, its calibration data, and the in-memory original."""
    folder = tmp_path_factory.mktemp("large")
    model = build_resnet50(seed=0, width=WIDTH)
    weights = weight_bytes(model)
    assert 5 << 20 <= weights <= 10 << 20, weights
    path = folder / "model" / "resnet.onnx"
    path.parent.mkdir()
    save_model(model, path, external_data=True)
    rng = np.random.default_rng(1)
    np.savez(folder / "calib.npz", input=rng.uniform(0, 1, (16, 3, IMAGE, IMAGE)).astype(np.float32))
    return path, folder / "calib.npz", model, weights


def _run(model_path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def _is_external(path: Path) -> bool:
    model = onnx.load(path, load_external_data=False)
    return any(external_data_helper.uses_external_data(t) for t in model.graph.initializer)


def test_input_is_stored_externally(stored) -> None:
    path, _, model, weights = stored
    assert _is_external(path)
    assert path.stat().st_size < 200 << 10  # the graph only
    data = path.with_name(path.name + ".data")
    assert weights <= data.stat().st_size < weights + (1 << 20)  # the weights, page-aligned
    loaded = load_model(path)
    for a, b in zip(loaded.graph.initializer, model.graph.initializer):
        assert a.name == b.name
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))


@pytest.mark.parametrize("external", [False, True])
@pytest.mark.parametrize("command", ["split", "inject", "calibrate"])
def test_cli_end_to_end(stored, tmp_path: Path, capsys, command: str, external: bool) -> None:
    path, data, _, weights = stored
    out = tmp_path / f"{command}.onnx"
    argv = [command, str(path), "-o", str(out), "-q"]
    if command == "inject":
        argv += ["--noise", "mul", "--eta", "0.05", "--seed", "3"]
    if command == "calibrate":
        argv += ["--data", str(data), "--noise", "mul", "--eta", "0.05", "--seed", "3", "--batch-size", "8"]
    if external:
        argv.append("--external-data")
    assert main(argv) == 0, capsys.readouterr().err
    side = out.with_name(out.name + ".data")
    assert _is_external(out) == external
    assert side.exists() == external
    if external:
        assert out.stat().st_size < 300 << 10 and side.stat().st_size >= weights
    else:
        assert out.stat().st_size >= weights
    onnx.checker.check_model(str(out), full_check=True)
    result = load_model(out)
    bns = sum(n.op_type == "BatchNormalization" for n in result.graph.node)
    convs = sum(n.op_type in ("Conv", "Gemm") for n in result.graph.node)
    assert bns == (0 if command == "inject" else convs)
    x = np.random.default_rng(5).uniform(0, 1, (2, 3, IMAGE, IMAGE)).astype(np.float32)
    y = _run(out, x)
    assert y.shape == (2, 1000) and np.isfinite(y).all()
    if command == "split":
        np.testing.assert_allclose(y, _run(path, x), rtol=0, atol=SPLIT_ATOL)
    # the input is untouched
    assert _is_external(path)


def test_streamed_serialization_is_byte_identical(stored) -> None:
    """The writer that never holds the whole serialized model writes exactly protobuf's bytes."""
    _, _, model, _ = stored
    buffer = io.BytesIO()
    serialize_model(model, buffer)
    assert buffer.getvalue() == model.SerializeToString()


def test_external_save_does_not_touch_the_model_in_memory(stored, tmp_path: Path) -> None:
    _, _, model, _ = stored
    before = model.SerializeToString()
    save_model(model, tmp_path / "copy.onnx", external_data=True)
    assert model.SerializeToString() == before
    assert _is_external(tmp_path / "copy.onnx")
