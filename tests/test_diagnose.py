"""Per-layer divergence: hand-checked formulas, zero without noise, smaller after calibration."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from nabn_onnx import NabnError, diagnose, make_noise
from nabn_onnx.cli import main
from nabn_onnx.evaluation.diagnose import SMOOTHING, js_divergence, kl_divergence

from test_sweep import trained_classifier

CLOSE = 1e-9


@pytest.fixture(scope="module")
def classifier():
    model, calib, _ = trained_classifier()
    return model, calib


def test_divergences_by_hand():
    p, q = np.array([3, 1]), np.array([1, 1])
    # P = (3/4, 1/4), Q = (1/2, 1/2), up to the smoothing.
    kl = 0.75 * np.log(1.5) + 0.25 * np.log(0.5)
    m = np.array([0.625, 0.375])
    js = 0.5 * (0.75 * np.log(0.75 / m[0]) + 0.25 * np.log(0.25 / m[1])) + 0.5 * (
        0.5 * np.log(0.5 / m[0]) + 0.5 * np.log(0.5 / m[1])
    )
    assert kl_divergence(p, q) == pytest.approx(kl, abs=1e-8)
    assert js_divergence(p, q) == pytest.approx(js, abs=1e-8)
    assert kl_divergence(p, p) == 0.0 and js_divergence(q, q) == 0.0
    # An empty bin in Q where P has mass: finite thanks to the smoothing, and large.
    assert np.isfinite(kl_divergence(np.array([1, 1]), np.array([2, 0])))
    assert kl_divergence(np.array([1, 1]), np.array([2, 0])) > 0.5 * np.log(0.5 / SMOOTHING) - 1
    assert js_divergence(np.array([1, 0]), np.array([0, 1])) == pytest.approx(np.log(2), abs=1e-6)


def test_no_noise_gives_zero_divergence(classifier):
    model, calib = classifier
    report = diagnose(model, calib, noise=make_noise("mul", 0.0), bins=50)
    assert [d.layer for d in report.layers][:3] == ["bn1", "bn2", "bn3"]
    assert all(d.kl_vanilla == 0.0 and d.js_vanilla == 0.0 for d in report.layers)
    assert all(d.kl_nabn >= 0.0 and d.js_nabn >= 0.0 for d in report.layers)


@pytest.mark.parametrize("kind,eta", [("mul", 0.5), ("add", 0.05)])
def test_calibration_brings_activations_closer(classifier, kind, eta):
    model, calib = classifier
    report = diagnose(model, calib, noise=make_noise(kind, eta, seed=2), bins=50)
    assert report.mean("kl_vanilla") > 0.05  # the noise moves the distributions ...
    assert report.mean("kl_nabn") < report.mean("kl_vanilla") / 3  # ... calibration brings them back
    assert report.mean("js_nabn") < report.mean("js_vanilla") / 3
    for layer in report.layers:
        assert layer.js_vanilla <= np.log(2) + CLOSE
        assert layer.kl_nabn < layer.kl_vanilla


def test_activation_taps_follow_relu(classifier):
    model, calib = classifier
    report = diagnose(model, calib, noise=make_noise("mul", 0.3), at="activation", bins=20, max_batches=2)
    tensors = {d.layer: d.tensor for d in report.layers}
    assert tensors["bn1"] == "r1"  # bn1 -> relu1
    assert tensors["bn2"] == "bn2_out"  # bn2 feeds a Conv: measured at its own output
    with pytest.raises(NabnError, match="'at'"):
        diagnose(model, calib, noise=make_noise("mul", 0.3), at="relu")


def test_cli_diagnose(classifier, tmp_path, capsys):
    model, calib = classifier
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", **calib)
    args = [
        "diagnose",
        str(tmp_path / "m.onnx"),
        "--data",
        str(tmp_path / "calib.npz"),
        "--noise",
        "mul",
        "--eta",
        "0.5",
        "--bins",
        "30",
    ]
    assert main([*args, "--report", str(tmp_path / "d.json"), "--plot", str(tmp_path / "d.png")]) == 0
    out = capsys.readouterr().out
    assert "| bn1 |" in out and "mean KL" in out
    assert len(json.loads((tmp_path / "d.json").read_text())["layers"]) == 4
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"
    assert main([*args[:-4], "--eta", "-1"]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_micro_batches_give_the_same_histograms(classifier, monkeypatch):
    """Batches cut to bound the exposed activations' memory change no count."""
    import importlib

    module = importlib.import_module("nabn_onnx.evaluation.diagnose")
    model, data = classifier
    noise = make_noise("mul", 0.3, seed=1)
    whole = diagnose(model, data, noise=noise, method="paper", batch_size=32, max_batches=3)
    seen = []
    real_run = module._MicroBatches.run

    def spy(self, session, feeds):
        for values in real_run(self, session, feeds):
            seen.append(values[0].shape[0])
            yield values

    monkeypatch.setattr(module, "_BUDGET", 1)  # one sample per run
    monkeypatch.setattr(module._MicroBatches, "run", spy)
    cut = diagnose(model, data, noise=noise, method="paper", batch_size=32, max_batches=3)
    assert seen and max(seen) == 1
    assert [(x.kl_vanilla, x.kl_nabn, x.js_vanilla, x.js_nabn) for x in cut.layers] == [
        (x.kl_vanilla, x.kl_nabn, x.js_vanilla, x.js_nabn) for x in whole.layers
    ]


def test_a_diagnose_config_is_its_keywords(classifier):
    from nabn_onnx.calibration.config import CalibrationConfig
    from nabn_onnx.evaluation import DiagnoseConfig

    model, data = classifier
    noise = make_noise("mul", 0.3, seed=1)
    keywords = dict(noise=noise, method="paper", batch_size=32, max_batches=2, at="bn", bins=50)
    config = DiagnoseConfig.build(None, dict(keywords))
    assert config.at == "bn" and config.bins == 50 and config.calibration.noise == noise
    by_keywords = diagnose(model, data, **keywords)
    by_object = diagnose(model, data, config)
    assert [vars(d) for d in by_object.layers] == [vars(d) for d in by_keywords.layers]
    calibration_only = diagnose(model, data, config.calibration, bins=50)  # a CalibrationConfig, as before
    assert isinstance(config.calibration, CalibrationConfig)
    assert [vars(d) for d in calibration_only.layers] == [vars(d) for d in by_keywords.layers]
