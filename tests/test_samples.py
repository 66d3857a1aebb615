"""The bundled sample models: split keeps outputs, calibration restores a collapsed chip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import nabn_onnx as nb
from nabn_onnx.passes import SplitBatchNormPass
from nabn_onnx.runtime import make_session

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
MODELS = sorted(p.name for p in SAMPLES.glob("*.onnx"))
#: The issue's bound on split: relative output difference through onnxruntime.
SPLIT_RTOL = 1e-5
#: Calibrated accuracy must come back within this many points of clean.
RESTORE_POINTS = 2.0


@pytest.fixture(scope="module")
def test_set():
    with np.load(SAMPLES / "digits_test.npz") as data:
        return data["input"], data["labels"]


def _outputs(model, x):
    return make_session(model).run(None, {"input": x})[0]


def _accuracy(model, test_set) -> float:
    x, y = test_set
    return 100.0 * float((_outputs(model, x).argmax(1) == y).mean())


def test_samples_are_there():
    assert {"resnet_fused.onnx", "resnet_bn.onnx", "mobilenet_fused.onnx", "mobilenet_bn.onnx"} <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_split_keeps_outputs_and_is_idempotent(name, test_set):
    x = test_set[0][:256]
    model = nb.load_model(SAMPLES / name)
    before = _outputs(model, x)
    first = SplitBatchNormPass()(model)
    after = _outputs(model, x)
    scale = np.abs(before).max()
    np.testing.assert_allclose(after, before, rtol=0, atol=SPLIT_RTOL * scale)
    assert not SplitBatchNormPass()(model).modified
    bns = sum(n.op_type == "BatchNormalization" for n in model.graph.node)
    convs = sum(n.op_type in ("Conv", "Gemm", "MatMul") for n in model.graph.node)
    assert bns == convs  # every analog layer now has one, original or inserted
    if "fused" in name:
        assert first.modified and len(first.details["inserted"]) == convs


@pytest.mark.parametrize("kind, eta", [("mul", 0.3), ("add", 0.005)])
def test_calibration_restores_the_collapsed_fused_resnet(kind, eta, test_set):
    path = SAMPLES / "resnet_fused.onnx"
    clean = _accuracy(nb.load_model(path), test_set)
    noise = nb.make_noise(kind, eta, seed=0)
    vanilla = _accuracy(nb.inject(path, noise).model, test_set)
    calibrated = _accuracy(nb.calibrate(path, SAMPLES / "digits_calib.npz", noise=noise).model, test_set)
    assert vanilla < clean / 2, (clean, vanilla)
    assert calibrated >= clean - RESTORE_POINTS, (clean, vanilla, calibrated)
