"""Noise models and InjectWeightNoisePass: reproducibility and the paper's formulas."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from nabn_onnx import NoiseConfigError, inject, make_noise
from nabn_onnx.model import read_record
from nabn_onnx.passes import InjectWeightNoisePass, SplitBatchNormPass

from builders import small_cnn

#: Relative tolerance of empirical moments over ~10^6 draws (a few standard errors).
MOMENT_RTOL = 0.02


def _weights(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_same_seed_same_bytes_other_seed_other_bytes():
    noise = make_noise("mul", 0.1, seed=7)
    a = inject(small_cnn(), noise).model
    b = inject(small_cnn(), noise).model
    c = inject(small_cnn(), make_noise("mul", 0.1, seed=8)).model
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    for name in ("w1", "w2", "w3", "fc_w"):
        assert wa[name].tobytes() == wb[name].tobytes()
        assert not np.array_equal(wa[name], wc[name])


def test_only_analog_weights_change_unless_bias_included():
    clean = _weights(small_cnn(with_bn=True))
    noisy = _weights(inject(small_cnn(with_bn=True), make_noise("add", 0.01, seed=1)).model)
    changed = {n for n in clean if not np.array_equal(clean[n], noisy[n])}
    assert changed == {"w1", "w2", "w3", "fc_w"}
    with_bias = _weights(inject(small_cnn(with_bn=True), make_noise("add", 0.01, seed=1, include_bias=True)).model)
    changed = {n for n in clean if not np.array_equal(clean[n], with_bias[n])}
    assert changed == {"w1", "b1", "w2", "w3", "fc_w", "fc_b"}


def test_realization_does_not_depend_on_the_rest_of_the_graph():
    noise = make_noise("mul", 0.2, seed=3)
    exported = inject(small_cnn(), noise).model
    split_model = small_cnn()
    SplitBatchNormPass()(split_model)
    InjectWeightNoisePass(noise)(split_model)
    for name in ("w1", "w2", "w3", "fc_w"):
        assert _weights(exported)[name].tobytes() == _weights(split_model)[name].tobytes()


@pytest.mark.parametrize("kind", ["mul", "add"])
@pytest.mark.parametrize("temporal", ["element", "layer"])
def test_empirical_moments_match_the_formulas(kind, temporal):
    eta, sigma_t, sigma_s = 0.05, 0.2, 0.1
    noise = make_noise(kind, eta, sigma_t=sigma_t, sigma_s=sigma_s, seed=11, temporal=temporal)
    w = np.full((1000, 1000), 0.5, dtype=np.float64)
    noisy = noise.apply("weight", w)
    factor = (noisy - w) / w if kind == "mul" else noisy - w  # = N_T * N_S in both models
    # E[N_T N_S] = eta;  Var = E[N_T^2] E[N_S^2] - eta^2
    expected_std = np.sqrt(eta**2 * (1 + sigma_t**2) * (1 + sigma_s**2) - eta**2)
    if temporal == "element":
        assert factor.mean() == pytest.approx(eta, rel=MOMENT_RTOL)
        assert factor.std() == pytest.approx(expected_std, rel=MOMENT_RTOL)
    else:
        # one N_T for the tensor: the spread left is the spatial one, around that single draw
        n_t = noise.temporal_draw("weight", w.shape)
        assert np.ndim(n_t) == 0
        assert factor.mean() == pytest.approx(float(n_t), rel=MOMENT_RTOL)
        assert factor.std() == pytest.approx(abs(float(n_t)) * sigma_s, rel=MOMENT_RTOL)


def test_spatial_draw_is_fixed_per_chip_and_temporal_redrawn_per_batch():
    noise = make_noise("mul", 0.1, seed=5)
    w = np.ones((64, 64), np.float32)
    first, again, later = noise.apply("w", w, 0), noise.apply("w", w, 0), noise.apply("w", w, 1)
    assert first.tobytes() == again.tobytes()
    assert not np.array_equal(first, later)
    np.testing.assert_array_equal(noise.spatial("w", w.shape), noise.spatial("w", w.shape))


def test_provenance_and_second_injection_is_refused():
    noise = make_noise("add", 0.001, seed=2)
    model = inject(small_cnn(), noise).model
    settings = read_record(model, "inject")
    assert settings["noise"] == "add" and settings["eta"] == 0.001 and settings["seed"] == 2
    assert settings["temporal"] == "element" and settings["tensors"] == 4
    again = InjectWeightNoisePass(noise)(model)
    assert not again.modified


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kind="mul", eta=-0.1),
        dict(kind="mul", eta=float("nan")),
        dict(kind="add", eta=1e6),
        dict(kind="mul", eta=0.1, sigma_t=-1),
        dict(kind="mul", eta=0.1, seed=-3),
        dict(kind="mul", eta=0.1, temporal="x"),
        dict(kind="salt", eta=0.1),
    ],
)
def test_bad_noise_parameters_raise_one_line_errors(kwargs):
    kind = kwargs.pop("kind")
    with pytest.raises(NoiseConfigError) as info:
        make_noise(kind, **kwargs)
    assert "\n" not in str(info.value)
