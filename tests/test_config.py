"""Settings types and the calibration's named steps, one by one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper

import nabn_onnx as nb
from nabn_onnx.calibration import CalibrationConfig, Calibrator, SplitConfig
from nabn_onnx.model import read_record
from nabn_onnx.settings import DataSettings, LayerSelection, RuntimeSettings

from builders import run

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
FUSED = SAMPLES / "resnet_fused.onnx"
KEPT = SAMPLES / "resnet_bn.onnx"
CALIB = SAMPLES / "digits_calib.npz"
TEST = SAMPLES / "digits_test.npz"
NOISE = nb.make_noise("mul", 0.3, seed=0)


def _weights(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_flat_keywords_fill_the_nested_settings():
    config = CalibrationConfig.build(None, dict(batch_size=32, include="conv", providers=["CPUExecutionProvider"]))
    assert config.data == DataSettings(32, None)
    assert config.layers == LayerSelection("conv", None)
    assert config.runtime.providers == ("CPUExecutionProvider",)
    assert config.method == "auto" and config.noise is None
    # keywords override a given config field by field, leaving the rest
    base = CalibrationConfig(method="paper", data=DataSettings(16, 2))
    merged = CalibrationConfig.build(base, dict(max_batches=5))
    assert merged.method == "paper" and merged.data == DataSettings(16, 5)
    assert base.data == DataSettings(16, 2)  # frozen: the given config is untouched


def test_unknown_keyword_and_bad_method_are_refused():
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'batchsize'.*batch_size"):
        nb.calibrate(FUSED, CALIB, noise=NOISE, batchsize=32)
    with pytest.raises(nb.NabnError, match="unknown method 'papr'"):
        CalibrationConfig(method="papr")
    with pytest.raises(TypeError, match="unexpected keyword argument 'method'"):
        nb.split(FUSED, CALIB, method="paper")


def test_config_and_keywords_give_the_same_model():
    config = CalibrationConfig(method="paper", noise=NOISE, data=DataSettings(64, 3))
    by_config = nb.calibrate(FUSED, CALIB, config).model
    by_keywords = nb.calibrate(FUSED, CALIB, method="paper", noise=NOISE, batch_size=64, max_batches=3).model
    by_class = Calibrator(config)(FUSED, CALIB).model
    a, b, c = _weights(by_config), _weights(by_keywords), _weights(by_class)
    assert a.keys() == b.keys() == c.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]) and np.array_equal(a[name], c[name]), name


def test_split_config_equals_keywords():
    config = SplitConfig(layers=LayerSelection(exclude="fc"), data=DataSettings(64, 2))
    by_config = nb.split(FUSED, CALIB, config).model
    by_keywords = nb.split(FUSED, CALIB, exclude="fc", batch_size=64, max_batches=2).model
    assert read_record(by_config, "split") == read_record(by_keywords, "split")
    a, b = _weights(by_config), _weights(by_keywords)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[n], b[n]) for n in a)


def test_the_steps_one_by_one():
    """Each step of a simulated 'auto' run extends the job as its docstring says."""
    calibrator = Calibrator(CalibrationConfig(noise=NOISE, data=DataSettings(64, 8)))
    job = calibrator.prepare(FUSED)
    assert job.mode == "simulated" and job.method == "auto"
    assert job.inserted and job.placeholders == job.names  # a fused model: every BatchNorm inserted now
    assert job.clean is job.model
    calibrator.plan_holdout(job, CALIB)
    assert job.holdout == "batches"  # 8 batches: every 4th is held out
    calibrator.measure_inserted(job, CALIB)
    # the inserted BatchNorms now hold the clean statistics of their inputs (no longer placeholders)
    first = job.names[0]
    assert not np.allclose(job.reference[first]["mean"], 0.0)
    calibrator.measure_clean(job, CALIB)
    assert job.clean_run is not None and job.clean_run.fit is not None and job.clean_run.held > 0
    session = calibrator.clean_session(job)
    before = _weights(job.model)
    calibrator.put_noise(job)
    after = _weights(job.model)
    changed = [n for n in before if not np.array_equal(before[n], after[n])]
    assert changed and read_record(job.model, "inject") is not None
    calibrator.measure_noisy(job, CALIB)
    assert job.noisy_run is not None and job.noisy_run.batches == 8
    # the noise moved the statistics Algorithm 1 measures
    clean_mean, noisy_mean = job.clean_run.stats[first][0], job.noisy_run.stats[first][0]
    assert not np.allclose(clean_mean, noisy_mean)
    calibrator.choose(job, CALIB, session)
    assert job.chosen in ("delta", "blend", "paper", "none") and set(job.scores) == {"delta", "blend", "paper", "none"}
    assert job.scored_on == 2 * 64  # batches 0 and 4 held out
    layers = calibrator.write_back(job)
    assert [layer.bn for layer in layers] == job.names
    report = calibrator.report(job, layers, 0.0)
    assert report.chosen == job.chosen and read_record(job.model, "calibrate")["chosen"] == job.chosen
    # the job's model is the calibrated chip: it recovers the clean accuracy
    with np.load(TEST) as data:
        x, y = data["input"], data["labels"]
    (logits,) = run(job.model, {"input": x})
    top1 = float((logits.argmax(axis=1) == y).mean())
    assert top1 > 0.95


def test_prepare_on_a_chip_without_its_clean_model(tmp_path):
    chip = nb.inject(KEPT, NOISE).model
    job = Calibrator(CalibrationConfig(method="paper")).prepare(chip)
    assert job.mode == "chip" and job.clean is None and job.method == "paper" and job.names
    with pytest.raises(nb.NabnError, match="'delta' needs the clean model"):
        Calibrator(CalibrationConfig(method="delta")).prepare(chip)


def test_diagnose_takes_the_calibration_config():
    config = CalibrationConfig(method="paper", noise=NOISE, data=DataSettings(64, 2))
    report = nb.diagnose(FUSED, CALIB, config, bins=20)
    assert report.method == "paper" and report.layers
    with pytest.raises(nb.NabnError, match="give the chip's noise"):
        nb.diagnose(FUSED, CALIB, method="paper")


def test_runtime_settings_normalise_providers():
    assert RuntimeSettings("CPUExecutionProvider").providers == ("CPUExecutionProvider",)
    assert RuntimeSettings([]).providers is None


def test_reuse_clean_measures_the_clean_model_once_and_changes_nothing(monkeypatch):
    prepared = nb.split(FUSED, CALIB, max_batches=4).model
    config = CalibrationConfig(data=DataSettings(64, 4))  # auto: the clean pass and session are needed
    calls = []
    real = Calibrator.measure_clean

    def counted(self, job, data, bar=None):
        calls.append(1)
        return real(self, job, data, bar)

    monkeypatch.setattr(Calibrator, "measure_clean", counted)
    shared = Calibrator(config, reuse_clean=True)
    reused = [shared.with_noise(nb.make_noise("mul", 0.2, seed=s))(prepared, CALIB) for s in range(3)]
    assert len(calls) == 1
    fresh = [nb.calibrate(prepared, CALIB, config.replace(noise=nb.make_noise("mul", 0.2, seed=s))) for s in range(3)]
    assert len(calls) == 4
    for a, b in zip(reused, fresh):
        assert a.report.chosen == b.report.chosen and a.report.scores == b.report.scores
        wa, wb = _weights(a.model), _weights(b.model)
        assert all(np.array_equal(wa[n], wb[n]) for n in wa)


def test_evaluate_takes_an_eval_config():
    config = nb.EvalConfig(data=DataSettings(100, 2))
    assert nb.evaluate(FUSED, TEST, "top1", config) == nb.evaluate(FUSED, TEST, batch_size=100, max_batches=2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'batches'"):
        nb.evaluate(FUSED, TEST, batches=2)


def test_sweep_takes_its_plan_and_settings_as_objects_or_keywords():
    plan = nb.SweepPlan.of("mul", [0.3], 2)
    settings = nb.SweepSettings(method="paper", calib_batches=2, test_batches=2)
    by_objects = nb.sweep(FUSED, CALIB, TEST, plan, settings)
    by_keywords = nb.sweep(
        FUSED, CALIB, TEST, noise="mul", etas=[0.3], seeds=2, method="paper", calib_batches=2, test_batches=2
    )
    assert by_objects.rows == by_keywords.rows and len(by_objects.rows) == 2
    with pytest.raises(TypeError, match="needs etas="):
        nb.sweep(FUSED, CALIB, TEST, seeds=2)
    with pytest.raises(TypeError, match="a SweepPlan and its keyword"):
        nb.sweep(FUSED, CALIB, TEST, plan, etas=[0.1])
    with pytest.raises(TypeError, match="unexpected keyword argument 'calibration_batches'"):
        nb.sweep(FUSED, CALIB, TEST, plan, calibration_batches=2)


# ------------------------------------------------------------------ the method registry


def test_every_public_method_resolves_in_the_registry():
    from nabn_onnx.calibration import CANDIDATES, METHOD_REGISTRY, METHODS, Method, get_method

    assert METHODS == ("auto", "paper", "delta")  # the public tuple, in the CLI's order
    for name in METHODS + CANDIDATES:
        method = get_method(name)
        assert isinstance(method, Method) and method.name == name and type(method) is METHOD_REGISTRY[name]
    assert {name for name, cls in METHOD_REGISTRY.items() if cls.selectable} == set(METHODS)
    assert get_method("auto").chooses and get_method("auto").candidates == CANDIDATES
    assert get_method("delta").needs_clean and not get_method("paper").needs_clean


def test_an_unknown_method_is_refused_in_one_line():
    from nabn_onnx.calibration import get_method

    with pytest.raises(nb.NabnError, match=r"^unknown method 'bogus'; choose one of auto, paper, delta") as caught:
        get_method("bogus")
    assert "\n" not in str(caught.value)
    with pytest.raises(nb.NabnError, match=r"^unknown method 'bogus'; choose one of auto, paper, delta$"):
        CalibrationConfig(method="bogus")


def test_registry_methods_write_the_statistics_their_formulas_say():
    """paper: noisy; none: reference; delta: the affine map; blend: their means (numpy reference)."""
    from nabn_onnx.calibration import new_stats

    rng = np.random.default_rng(3)
    mean, var = rng.normal(0, 1, 4), rng.uniform(0.5, 2, 4)
    mu_c, v_c, mu_n, v_n = rng.normal(0, 1, 4), rng.uniform(0.5, 2, 4), rng.normal(0, 1, 4), rng.uniform(0.5, 2, 4)
    args = (["bn"], {"bn": {"mean": mean, "var": var}}, {"bn": (mu_n, v_n)}, {"bn": (mu_c, v_c)})
    paper, none, delta, blend = (new_stats(m, *args)["bn"] for m in ("paper", "none", "delta", "blend"))
    assert paper["mean"] is mu_n and paper["var"] is v_n and none["mean"] is mean and none["var"] is var
    np.testing.assert_allclose(delta["var"], var * v_n / v_c, rtol=1e-12)
    np.testing.assert_allclose(blend["mean"], 0.5 * (delta["mean"] + mu_n), rtol=1e-12)
    np.testing.assert_allclose(blend["var"], np.sqrt(delta["var"] * v_n), rtol=1e-12)
    with pytest.raises(TypeError, match="chooses"):
        new_stats("auto", *args)


def test_a_job_is_built_by_keyword():
    from nabn_onnx.calibration import CalibrationJob

    model = nb.load_model(KEPT)
    job = CalibrationJob.start(model=model, clean=None, mode="chip", method="paper", names=["a"], origin={})
    assert job.placeholders == [] and job.left == {} and job.note == "" and job.strategy.name == "paper"
    with pytest.raises(ValueError, match="mode"):
        CalibrationJob.start(model=model, clean=None, mode="chips", method="paper", names=[], origin={})


# ------------------------------------------------------------------ one scoring loop


def test_auto_and_the_chip_guard_score_with_the_same_loop(monkeypatch):
    """auto (clean model known) and the chip guard (none) both go through scoring.score_candidates."""
    from nabn_onnx.calibration import choice, scoring

    real = scoring.score_candidates
    scorers = []

    def counted(model, candidates, data, reading, scorer, **kwargs):
        scorers.append((type(scorer).__name__, tuple(candidates)))
        return real(model, candidates, data, reading, scorer, **kwargs)

    monkeypatch.setattr(choice, "score_candidates", counted)
    auto = nb.calibrate(KEPT, CALIB, noise=NOISE, max_batches=4)
    assert scorers == [("OutputDivergenceScorer", ("delta", "blend", "paper", "none"))]
    assert set(auto.report.scores) == {"delta", "blend", "paper", "none"}
    chip = nb.inject(KEPT, NOISE).model
    guarded = nb.calibrate(chip, CALIB, max_batches=4)
    assert scorers[1:] == [("Top1Scorer", ("paper", "none"))]
    assert set(guarded.report.scores) == {"paper", "none"} and "top-1" in guarded.report.note


def test_a_swapped_scorer_decides_the_chip_guard(monkeypatch):
    """The guard's choice is the scorer's pick: a scorer that prefers 'none' makes the guard keep the statistics."""
    from nabn_onnx.calibration import choice, scoring

    class PrefersNone(scoring.Top1Scorer):
        def pick(self, scores):
            return "none"

    monkeypatch.setattr(choice, "Top1Scorer", PrefersNone)
    chip = nb.inject(KEPT, NOISE).model
    result = nb.calibrate(chip, CALIB, max_batches=4)
    assert result.report.chosen == "none" and "kept the statistics as they were" in result.report.note
    before = {n: a for n, a in _weights(nb.load_model(chip)).items() if "running" in n or "mean" in n or "var" in n}
    after = _weights(result.model)
    assert before and all(np.array_equal(before[n], after[n]) for n in before)


# ------------------------------------------------------------------ inject's settings


def test_inject_takes_its_config_or_the_old_keywords():
    from nabn_onnx.calibration import InjectConfig

    old = nb.inject(KEPT, NOISE, include="conv").model
    by_config = nb.inject(KEPT, config=InjectConfig(NOISE, LayerSelection(include="conv"))).model
    by_keyword = nb.inject(KEPT, noise=NOISE, include="conv").model
    assert old.SerializeToString() == by_config.SerializeToString() == by_keyword.SerializeToString()
    overridden = nb.inject(KEPT, NOISE, InjectConfig(nb.make_noise("mul", 0.9, seed=5), LayerSelection("conv")))
    assert overridden.model.SerializeToString() == old.SerializeToString()  # the flat noise fills config's field
    with pytest.raises(TypeError, match="needs the noise"):
        nb.inject(KEPT)
    with pytest.raises(TypeError, match="unexpected keyword argument 'layer'"):
        nb.inject(KEPT, NOISE, layer="conv")


def test_the_scored_parts_are_read_once_for_all_candidates(monkeypatch):
    """auto reads its held-out parts once and keeps them for the other candidates (re-reads them when too large)."""
    from nabn_onnx.calibration import scoring

    real = scoring.iter_batches
    reads = []

    def counted(*args, **kwargs):
        reads.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, "iter_batches", counted)
    kept = nb.calibrate(KEPT, CALIB, noise=NOISE, max_batches=4)
    assert len(reads) == 1
    monkeypatch.setattr(scoring, "_CACHE_LIMIT", 0)  # nothing kept: one read per candidate
    reads.clear()
    reread = nb.calibrate(KEPT, CALIB, noise=NOISE, max_batches=4)
    assert len(reads) == 4
    assert kept.report.scores == reread.report.scores and kept.report.chosen == reread.report.chosen


def test_a_kept_held_out_slice_does_not_hold_its_whole_batch():
    from nabn_onnx.calibration.holdout import holdout_split
    from nabn_onnx.calibration.scoring import _owned
    from nabn_onnx.data import Batch

    batch = Batch({"x": np.arange(80, dtype=np.float32).reshape(8, 10)}, np.arange(8))
    _, held = holdout_split(batch)
    owned = _owned(held)
    assert owned.feeds["x"].base is None and owned.labels.base is None
    np.testing.assert_array_equal(owned.feeds["x"], batch.feeds["x"][6:])
    assert _owned(owned) is owned


def _counting(function, calls):
    def counted(*args, **kwargs):
        calls.append(1)
        return function(*args, **kwargs)

    return counted


def test_reuse_clean_on_a_fused_model_measures_the_clean_side_once(monkeypatch):
    """A fused model: the inserted BatchNorms' statistics, the clean pass and the clean outputs are reused per chip."""
    import sys

    from nabn_onnx.calibration import scoring

    passes, runs = [], []
    real_run = scoring.run_pieces
    # every pass over the data: the tap (through collect_stats) and the training-mode passes (the calibrator's)
    for module in ("nabn_onnx.calibration.measure", "nabn_onnx.calibration.calibrator"):
        real_measure = sys.modules[module].measure  # the package exports a function of that name: sys.modules
        monkeypatch.setattr(sys.modules[module], "measure", _counting(real_measure, passes))
    monkeypatch.setattr(scoring, "run_pieces", _counting(real_run, runs))
    config = CalibrationConfig(data=DataSettings(64, 4))
    shared = Calibrator(config, reuse_clean=True)
    chips = [nb.make_noise("mul", 0.2, seed=s) for s in range(3)]
    reused = [shared.with_noise(chip)(FUSED, CALIB) for chip in chips]
    # chip 0: clean statistics, clean pass, noisy pass; then the noisy pass alone. Scoring: 4 candidates on
    # the one held-out batch, and the clean outputs once
    assert (len(passes), len(runs)) == (3 + 1 + 1, 5 + 4 + 4)
    assert reused[1].report.steps.get("measure_clean") is None
    fresh = [nb.calibrate(FUSED, CALIB, config.replace(noise=chip)) for chip in chips]
    assert (len(passes), len(runs)) == (5 + 9, 13 + 15)
    for a, b in zip(reused, fresh):
        assert a.report.chosen == b.report.chosen and a.report.scores == b.report.scores
        assert a.report.inserted == b.report.inserted and a.report.inserted
        wa, wb = _weights(a.model), _weights(b.model)
        assert wa.keys() == wb.keys() and all(np.array_equal(wa[n], wb[n]) for n in wa)
