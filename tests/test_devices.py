"""Device models (PCM, RRAM, faults) against constants and formulas taken from aihwkit 1.2.0.

The expected values below are computed here from the numbers printed in aihwkit's source
(``src/aihwkit/inference/noise/pcm.py``, ``reram.py``, ``compensation/drift.py``,
``converter/conductance.py``), not from our implementation, so a wrong port fails. aihwkit
itself is not needed (``tools/reference/compare_aihwkit.py`` runs it against ours).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from onnx import numpy_helper

from nabn_onnx import NoiseConfigError, inject, make_noise
from nabn_onnx.model import read_record
from nabn_onnx.noise import PCMNoise, RRAMCMONoise, RRAMNoise, load_device_file
from nabn_onnx.passes import InjectWeightNoisePass, SplitBatchNormPass

from builders import small_cnn

#: Samples per empirical check, and the relative tolerance that allows (about 6 standard
#: errors of a standard deviation estimated from N normals: sqrt(1 / (2 N))).
N = 200_000
STD_RTOL = 6 / math.sqrt(2 * N)
CONST_RTOL = 1e-12

# pcm.py:89 (programming polynomial, uS at g_max = 25 uS), pcm.py:126-127 (drift), pcm.py:148 (1/f)
PROG = (0.26348, 1.9650, -1.1731)
T0, TREAD = 20.0, 250e-9  # pcm.py:69-70


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("x", [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("g_max", [25.0, 40.0])
def test_pcm_programming_sigma_is_aihwkits_polynomial(x, g_max):
    pcm = PCMNoise(g_max=g_max)
    expected = (PROG[0] + PROG[1] * x + PROG[2] * x * x) * g_max / 25.0
    got = pcm.programming_sigma(np.array([x * g_max]))[0]
    assert got == pytest.approx(expected, rel=CONST_RTOL)


@pytest.mark.parametrize(
    "x,mu,sigma",
    [
        (1.0, 0.049, 0.008),  # both clipped at their lower bounds
        (0.5, max(0.049, -0.0155 * math.log(0.5) + 0.0244), max(0.008, -0.0125 * math.log(0.5) - 0.0059)),
        (0.1, -0.0155 * math.log(0.1) + 0.0244, -0.0125 * math.log(0.1) - 0.0059),
        (0.01, -0.0155 * math.log(0.01) + 0.0244, 0.045),
        (0.0, 0.1, 0.045),  # x clipped at 1e-7: both at their upper bounds
    ],
)
def test_pcm_drift_coefficient_moments(x, mu, sigma):
    got_mu, got_sigma = PCMNoise.nu_moments(np.array([x]))
    assert got_mu[0] == pytest.approx(mu, rel=CONST_RTOL)
    assert got_sigma[0] == pytest.approx(sigma, rel=CONST_RTOL)


@pytest.mark.parametrize("x", [1.0, 0.3, 0.001])
@pytest.mark.parametrize("t", [0.0, 3600.0, 3.15e7])
def test_pcm_read_noise_sigma(x, t):
    q_s = min(0.0088 / max(x**0.65, 1e-3), 0.2)
    expected = q_s * math.sqrt(math.log((t + T0 + TREAD) / (2 * TREAD)))
    got = PCMNoise(t_inference=t).read_sigma(np.array([x * 25.0]))[0]
    assert got == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("x", [0.1, 0.5, 1.0])
def test_pcm_programming_draws_have_the_polynomial_spread(x):
    pcm = PCMNoise()
    g = np.full(N, 25.0 * x)
    sigma = PCMNoise().programming_sigma(g[:1])[0]
    drawn = pcm.program(g, _rng(1))
    assert drawn.std() == pytest.approx(sigma, rel=STD_RTOL)
    assert abs(drawn.mean() - 25.0 * x) < 6 * sigma / math.sqrt(N)


@pytest.mark.parametrize("x", [0.05, 0.5, 1.0])
@pytest.mark.parametrize("t", [3600.0, 86400.0 * 365])
def test_pcm_drift_mean_is_the_lognormal_expectation(x, t):
    """Without programming and read noise, E[G(t)] / G_T = E[(t/t0)^-|nu|] with nu ~ N(mu, sigma^2)
    (pcm.py:128, 142), L = ln((t + t0) / t0) (log_t below): the folded-normal Laplace transform
    exp(-mu L + s^2 L^2 / 2) Phi(mu/s - s L) + exp(mu L + s^2 L^2 / 2) Phi(-mu/s - s L)."""
    pcm = PCMNoise(t_inference=t, prog_noise_scale=0.0, read_noise_scale=0.0)
    g = np.full(N, 25.0 * x)
    nu = pcm.drift_coefficients(g, _rng(2))
    ratio = pcm.drift(g, nu, _rng(3)) / g
    mu, sigma = (float(v[0]) for v in PCMNoise.nu_moments(np.array([x])))
    log_t = math.log((t + T0) / T0)

    def phi(z):
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))

    expected = math.exp(-mu * log_t + 0.5 * (sigma * log_t) ** 2) * phi(mu / sigma - sigma * log_t) + math.exp(
        mu * log_t + 0.5 * (sigma * log_t) ** 2
    ) * phi(-mu / sigma - sigma * log_t)
    assert ratio.mean() == pytest.approx(expected, abs=6 * ratio.std() / math.sqrt(N))
    assert np.abs(mu + sigma * _rng(2).standard_normal(N)).std() == pytest.approx(nu.std(), rel=STD_RTOL)


def test_drift_scale_zero_means_no_drift_and_time_zero_only_read_noise():
    w = _rng(4).normal(0, 0.1, (32, 16, 3, 3)).astype(np.float32)
    still = PCMNoise(t_inference=1e6, drift_scale=0.0, read_noise_scale=0.0, prog_noise_scale=0.0).apply("w", w)
    np.testing.assert_allclose(still, w, rtol=1e-6, atol=1e-7)
    drifted = PCMNoise(t_inference=1e6, read_noise_scale=0.0, prog_noise_scale=0.0).apply("w", w)
    assert np.abs(drifted).mean() < 0.8 * np.abs(w).mean()  # (1e6/20)^-0.05 or less


def test_global_drift_compensation_restores_the_programmed_mean_magnitude():
    w = _rng(5).normal(0, 0.1, (64, 32, 3, 3)).astype(np.float64)
    plain = PCMNoise(t_inference=86400.0 * 30, seed=3)
    gdc = PCMNoise(t_inference=86400.0 * 30, seed=3, compensation="global")
    w_prog, _ = plain.programmed("w", w)
    drifted, compensated = plain.apply("w", w), gdc.apply("w", w)
    alpha = np.abs(w_prog).mean() / np.abs(drifted).mean()  # drift.py:30 readout, base.py:59 ratio
    assert alpha > 1.1
    np.testing.assert_allclose(compensated, drifted * alpha, rtol=1e-12)
    assert np.abs(compensated).mean() == pytest.approx(np.abs(w_prog).mean(), rel=1e-12)


def test_pair_mapping_is_aihwkits_single_pair_converter():
    """converter/conductance.py:54-65: max|W| to g_max; positive weights on G+, negative on G-."""
    pcm = PCMNoise(g_max=25.0, g_min=2.0)
    w = np.array([0.5, -1.0, 0.25, 0.0])
    (g_plus, g_minus), scale = pcm.to_conductances(w)
    assert scale == pytest.approx(23.0)
    np.testing.assert_allclose(g_plus, [13.5, 2.0, 7.75, 2.0])
    np.testing.assert_allclose(g_minus, [2.0, 25.0, 2.0, 2.0])
    np.testing.assert_allclose(pcm.to_weights([g_plus, g_minus], scale), w)


@pytest.mark.parametrize(
    "t,coeffs",
    [
        (1.0, [-16.815, 45.393, -43.853, 16.030, 0.348][::-1]),  # reram.py:90
        (86400.0, [-16.458, 47.095, -50.773, 22.086, 0.701][::-1]),  # reram.py:91
        (172800.0, [-11.934, 37.062, -43.507, 20.274, 0.782][::-1]),  # reram.py:92
    ],
)
def test_rram_wan2022_polynomials(t, coeffs):
    rram = RRAMNoise(t_inference=t)
    for x in (0.0, 0.3, 1.0):
        expected = sum(c * x**i for i, c in enumerate(coeffs))
        assert rram.sigma_at(t, np.array([25.0 * x]))[0] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    g = np.full(N, 10.0)
    drawn = rram.drift(g, g, _rng(6))
    assert drawn.std() == pytest.approx(rram.sigma_at(t, g[:1])[0], rel=STD_RTOL)


def test_rram_cmo_programming_and_relaxation():
    cmo = RRAMCMONoise(t_inference=3600.0, read_noise_scale=0.0)
    g = np.full(N, 50.0)
    programmed = cmo.program(g, _rng(7))
    assert programmed.std() == pytest.approx(0.00081107 + 0.00106879 * 50.0, rel=STD_RTOL)  # reram.py:235
    relaxed = cmo.drift(g, None, _rng(8))  # reram.py:241: mean -0.089 ln t, std 0.042 ln t + 0.412
    log_t = math.log(3600.0)
    assert relaxed.mean() == pytest.approx(50.0 - 0.08900206 * log_t, abs=1e-2)
    assert relaxed.std() == pytest.approx(0.04201137 * log_t + 0.41183342, rel=STD_RTOL)


def test_stuck_cells_and_levels():
    w = _rng(9).normal(0, 1.0, 100_000)
    quantized = make_noise("ideal", levels=5).apply("w", w)
    assert len(np.unique(np.round(quantized / np.abs(w).max(), 9))) <= 2 * 5 - 1
    both = make_noise("ideal", stuck_min=0.1, stuck_max=0.05, seed=1)
    (g_plus, _), _ = both.to_conductances(w)
    stuck = both._stick(g_plus.copy() * 0 + 7.0, _rng(10))
    assert (stuck == both.g_min).mean() == pytest.approx(0.1, abs=0.005)
    assert (stuck == both.g_max).mean() == pytest.approx(0.05, abs=0.004)
    everything = make_noise("ideal", stuck_max=1.0).apply("w", w)  # both devices at g_max: every weight 0
    np.testing.assert_array_equal(everything, 0.0)
    clipped = make_noise("ideal", clip_sigma=2.0).apply("w", w)
    assert np.abs(clipped).max() == pytest.approx(2.0 * w.std(), rel=1e-9)


def test_chip_is_fixed_per_seed_name_shape_and_time_only_changes_the_drift():
    w = _rng(11).normal(0, 0.1, (16, 8, 3, 3)).astype(np.float32)
    a, b = PCMNoise(seed=4, t_inference=3600.0), PCMNoise(seed=4, t_inference=86400.0)
    np.testing.assert_array_equal(a.apply("w", w), a.apply("w", w))
    np.testing.assert_array_equal(a.programmed("w", w)[0], b.programmed("w", w)[0])
    assert not np.array_equal(a.apply("w", w), b.apply("w", w))
    assert not np.array_equal(a.apply("w", w), PCMNoise(seed=5, t_inference=3600.0).apply("w", w))
    np.testing.assert_array_equal(a.apply("w", w, draw=0), a.apply("w", w, draw=1))  # one chip state at t
    redraw = PCMNoise(seed=4, t_inference=3600.0, read_per_draw=True)
    np.testing.assert_array_equal(redraw.apply("w", w, draw=0), a.apply("w", w, draw=0))
    assert not np.array_equal(redraw.apply("w", w, draw=0), redraw.apply("w", w, draw=1))  # read noise re-drawn
    np.testing.assert_array_equal(a.programmed("w", w)[0], a.programmed("w", w.copy())[0])


def test_inject_records_the_device_and_matches_on_the_split_model():
    noise = make_noise("pcm", t_inference=3600.0, seed=2, compensation="global", levels=64)
    exported = inject(small_cnn(), noise).model
    settings = read_record(exported, "inject")
    assert settings["noise"] == "pcm" and settings["t_inference"] == 3600.0 and settings["levels"] == 64
    assert settings["compensation"] == "global" and settings["prog_coeff"] == list(PROG)
    split_model = small_cnn()
    SplitBatchNormPass()(split_model)
    InjectWeightNoisePass(noise)(split_model)
    a = {t.name: numpy_helper.to_array(t) for t in exported.graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in split_model.graph.initializer}
    for name in ("w1", "w2", "w3"):
        np.testing.assert_array_equal(a[name], b[name])


def test_device_file_json(tmp_path):
    path = tmp_path / "pcm.json"
    path.write_text(json.dumps({"noise": "pcm", "t_inference": 86400, "drift_scale": 0.5, "prog_coeff": [0.1, 0.2]}))
    options = load_device_file(path)
    kind = options.pop("noise")
    noise = make_noise(kind, **options)
    assert isinstance(noise, PCMNoise) and noise.prog_coeff == (0.1, 0.2) and noise.drift_scale == 0.5


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(drift_scale=-0.1),
        dict(g_min=30.0),
        dict(stuck_min=-0.1),
        dict(stuck_max=1.1),
        dict(levels=0),
        dict(levels=1),
        dict(t_inference=-1.0),
        dict(compensation="local"),
        dict(t_read=0.0),
        dict(bogus=1),
    ],
)
def test_bad_device_parameters_raise(kwargs):
    with pytest.raises(NoiseConfigError):
        make_noise("pcm", **kwargs)
