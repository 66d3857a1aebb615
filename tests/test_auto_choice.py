"""``auto``'s choice: a paired test on per-sample scores, the simpler candidate within noise, top-1 with labels.

The rule (:func:`nabn_onnx.calibration.choice.decide`) is checked on constructed per-sample
scores, where the right answer is known; the end-to-end cases run ``calibrate`` on small
models built in code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nabn_onnx import calibrate, inject, load_model, make_noise
from nabn_onnx.calibration import SEVERE, OutputDivergence
from nabn_onnx.calibration.choice import PREFERENCE, WITHIN_NOISE, decide
from nabn_onnx.calibration.scoring import ChoiceMeter, Reference

from builders import images, run, small_cnn

#: Samples scored in the constructed cases (the issue's recognizer scored 48).
N = 48


def _scores(per_sample):
    return {name: float(np.mean(values)) for name, values in per_sample.items()}


def _noisy(mean: float, spread: float, seed: int) -> np.ndarray:
    """``N`` per-sample scores around ``mean`` (non-negative, like a divergence)."""
    return np.abs(mean + spread * np.random.default_rng(seed).normal(size=N))


def test_preference_runs_from_the_simplest_candidate():
    assert PREFERENCE[0] == "delta" and PREFERENCE[-1] == "none" and WITHIN_NOISE >= 1.5


def test_a_lower_score_within_noise_keeps_the_simpler_candidate():
    """blend's mean is lower than delta's, but sample by sample the difference is noise: delta is kept."""
    base = _noisy(0.02, 0.01, 0)
    jitter = np.random.default_rng(1).normal(scale=0.01, size=N)
    blend = base - 0.0015 + jitter - jitter.mean()  # 0.0015 below delta on average, +-0.0014: within noise
    per_sample = {"delta": base, "blend": blend, "paper": base + 0.05, "none": base + 0.5}
    scores = _scores(per_sample)
    assert scores["blend"] < scores["delta"]  # the old rule (lowest mean) took blend
    decision = decide(scores, per_sample)
    assert decision.lowest == "blend" and decision.chosen == "delta"
    assert "within the noise" in decision.reason and "'blend' scored lower" in decision.reason
    mean, error = decision.differences["blend"]
    assert mean < 0 and -mean < WITHIN_NOISE * error


def test_a_candidate_better_beyond_noise_is_chosen():
    """blend is lower than delta on nearly every sample: the difference is real and blend is chosen."""
    base = _noisy(0.02, 0.01, 2)
    per_sample = {"delta": base + 0.004, "blend": base, "paper": base + 0.05, "none": base + 0.5}
    decision = decide(_scores(per_sample), per_sample)
    assert decision.chosen == "blend" and decision.reason == ""


def test_paper_is_preferred_to_blend_within_noise_when_delta_is_clearly_worse():
    base = _noisy(0.05, 0.01, 3)
    jitter = np.random.default_rng(4).normal(scale=0.01, size=N)
    paper = base + 0.002 + jitter - jitter.mean()  # 0.002 above blend on average, +-0.0014: within noise
    per_sample = {"delta": base + 0.05, "blend": base, "paper": paper, "none": base + 1}
    decision = decide(_scores(per_sample), per_sample)
    assert decision.lowest == "blend" and decision.chosen == "paper"


def test_never_worse_than_none_on_its_own_score():
    """A simpler candidate within noise of the best is still refused when its mean is above none's."""
    base = _noisy(0.02, 0.01, 5)
    noise = np.random.default_rng(6).normal(scale=0.02, size=N)
    per_sample = {
        "delta": np.abs(base + noise + 0.002),  # within noise of none, but its mean is above none's
        "blend": base + 0.3,
        "paper": base + 0.4,
        "none": base,
    }
    scores = _scores(per_sample)
    assert scores["delta"] > scores["none"]
    decision = decide(scores, per_sample)
    assert decision.chosen == "none"
    assert decide(scores, {name: values[:1] for name, values in per_sample.items()}).chosen == "none"


def test_severe_noise_falls_back_to_the_paper():
    per_sample = {name: _noisy(SEVERE + 0.2 + k, 0.01, k) for k, name in enumerate(("delta", "blend", "paper"))}
    per_sample["none"] = _noisy(5.0, 0.1, 9)
    assert decide(_scores(per_sample), per_sample).chosen == "paper"


def test_without_per_sample_scores_the_lowest_mean_wins():
    assert decide({"delta": 0.3, "blend": 0.2, "paper": 0.25, "none": 1.0}).chosen == "blend"


def test_the_task_metric_overrides_the_divergence_beyond_noise():
    """delta is closest to the clean outputs, but on labelled data paper classifies clearly more samples right."""
    base = _noisy(0.05, 0.01, 7)
    per_sample = {"delta": base, "blend": base + 0.02, "paper": base + 0.04, "none": base + 1}
    right = np.ones(N)
    delta_right = right.copy()
    delta_right[:12] = 0  # delta misses 12 of 48 that paper gets right
    task = {"delta": delta_right, "blend": delta_right, "paper": right, "none": right * 0}
    decision = decide(_scores(per_sample), per_sample, task)
    assert decision.closest == "delta" and decision.chosen == "paper"
    assert "top-1" in decision.reason and decision.task["paper"] == 1.0
    # one sample apart is noise: the divergence's choice stands
    delta_right = right.copy()
    delta_right[:1] = 0
    task = {"delta": delta_right, "blend": delta_right, "paper": right, "none": right * 0}
    assert decide(_scores(per_sample), per_sample, task).chosen == "delta"


def test_the_task_metric_never_overrides_an_exact_reproduction():
    """A chip the noise did not change: delta reproduces the clean outputs exactly, kept whatever the labels say."""
    zero = np.zeros(N)
    per_sample = {"delta": zero, "blend": zero + 0.01, "paper": zero + 0.02, "none": zero}
    task = {"delta": np.zeros(N), "blend": np.ones(N), "paper": np.ones(N), "none": np.zeros(N)}
    assert decide(_scores(per_sample), per_sample, task).chosen == "delta"


def test_per_sample_divergence_averages_to_the_score():
    rng = np.random.default_rng(0)
    meter = OutputDivergence()
    for size in (16, 5):
        logits = rng.normal(size=(size, 7)).astype(np.float32)
        maps = rng.normal(size=(size, 2, 3, 3)).astype(np.float32)
        meter.update([logits, maps], [logits + rng.normal(scale=0.3, size=logits.shape), maps * 1.1])
    per_sample = meter.per_sample()
    assert per_sample.shape == (21,) and np.all(per_sample > 0)
    assert np.mean(per_sample) == pytest.approx(meter.result(), rel=1e-12)


def test_choice_meter_keeps_top1_only_for_labelled_classifiers():
    logits = np.eye(4, dtype=np.float32)
    meter = ChoiceMeter()
    meter.update(Reference([logits], np.array([0, 1, 2, 0])), [logits])
    assert list(meter.task()) == [1.0, 1.0, 1.0, 0.0] and meter.result() == 0.0
    maps = ChoiceMeter()
    maps.update(Reference([logits], np.zeros((4, 2, 2), np.int64)), [logits])  # segmentation labels
    assert maps.task() is None
    unlabelled = ChoiceMeter()
    unlabelled.update(Reference([logits], None), [logits])
    assert unlabelled.task() is None


# ------------------------------------------------------------------ end to end

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
needs_samples = pytest.mark.skipif(not (SAMPLES / "resnet_fused.onnx").exists(), reason="sample_models/ not built")
NOISE = make_noise("mul", 0.3, seed=0)  # vanilla 19.8% on the digits test set, every calibration 99.6%


def _digits(count: int = 256):
    with np.load(SAMPLES / "digits_calib.npz") as archive:
        return archive["input"][:count], archive["labels"][:count]


@needs_samples
def test_labels_that_side_with_the_noisy_chip_make_auto_keep_the_statistics():
    """The task (top-1 on the calibration labels) against the divergence from the clean outputs.

    Labelled with the uncalibrated chip's own predictions, the calibration data says that
    leaving the statistics as they are ('none') is right on every held-out sample, while
    every calibration is far closer to the clean outputs: the labels decide.
    """
    model = SAMPLES / "resnet_fused.onnx"
    x, labels = _digits()
    without = calibrate(model, {"input": x}, method="auto", noise=NOISE, batch_size=64)
    truthful = calibrate(model, {"input": x, "labels": labels}, method="auto", noise=NOISE, batch_size=64)
    assert without.report.chosen == truthful.report.chosen == "delta"
    assert without.report.scores == truthful.report.scores and "top-1" not in truthful.report.note
    chip = inject(model, NOISE).model
    sided = run(chip, {"input": x})[0].argmax(axis=1).astype(np.int64)
    assert (sided != labels).mean() > 0.5  # the chip is wrong on most digits
    fooled = calibrate(model, {"input": x, "labels": sided}, method="auto", noise=NOISE, batch_size=64)
    assert fooled.report.chosen == "none" and fooled.report.scores == without.report.scores
    assert "top-1 on the 64 held-out labelled samples scored 100.0%" in fooled.report.note
    assert fooled.report.scores["none"] > 100 * fooled.report.scores["delta"]  # the divergence alone says delta


@needs_samples
def test_labels_do_not_change_a_noise_free_calibration_bit_for_bit():
    model = SAMPLES / "resnet_fused.onnx"
    x, _ = _digits()
    paper = calibrate(model, {"input": x}, method="paper", noise=make_noise("mul", 0.0, seed=0), batch_size=64)
    sided = run(paper.model, {"input": x})[0].argmax(axis=1).astype(np.int64)  # labels that side with paper
    result = calibrate(
        model, {"input": x, "labels": sided}, method="auto", batch_size=64, noise=make_noise("mul", 0.0, seed=0)
    )
    assert result.report.chosen == "delta" and result.report.scores["delta"] == 0.0
    np.testing.assert_array_equal(run(result.model, {"input": x})[0], run(load_model(model), {"input": x})[0])


def test_auto_is_never_below_none_on_its_held_out_score():
    """Whatever auto keeps scores at most none's mean on the held-out samples."""
    model, x = small_cnn(with_bn=True), images(512)
    chosen = set()
    for kind, eta in (("add", 0.01), ("add", 0.05), ("mul", 0.3), ("add", 0.8)):
        report = calibrate(
            model, {"input": x}, method="auto", noise=make_noise(kind, eta, seed=1), batch_size=64
        ).report
        assert report.scores[report.chosen] <= report.scores["none"], (kind, eta, report.scores)
        chosen.add(report.chosen)
    assert len(chosen) > 1  # the cases reach different choices


def test_scores_within_float_rounding_are_ties():
    """Outputs that do not move with the statistics score every candidate within 1e-15 of 0, any sign."""
    rng = np.random.default_rng(0)
    per_sample = {
        name: rng.normal(0.0, 1e-16, 32) + offset
        for name, offset in (("delta", 2e-17), ("blend", 3e-16), ("paper", 7e-16), ("none", -1.1e-15))
    }
    scores = {name: float(v.mean()) for name, v in per_sample.items()}
    assert min(scores, key=scores.__getitem__) == "none"
    decision = decide(scores, per_sample)
    assert decision.chosen == "delta" and decision.lowest == "delta" and not decision.reason
    # a real difference is still one: none clearly below the others wins
    per_sample["none"] = per_sample["none"] - 1e-3
    assert decide({n: float(v.mean()) for n, v in per_sample.items()}, per_sample).chosen == "none"
