"""Robustness sweeps on a classifier built in code: report schema, determinism, NaBN against vanilla."""

from __future__ import annotations

import copy
import csv
import io
import json
import sys

import numpy as np
import onnx
import pytest

from nabn_onnx import NabnError, calibrate, sweep
from nabn_onnx.cli import main
from nabn_onnx.evaluation.evaluate import Evaluator
from nabn_onnx.evaluation.runner import one_number
from nabn_onnx.evaluation.sweep_report import ROW_KEYS
from nabn_onnx.model import set_initializer

from builders import small_cnn

CHANNELS, CLASSES, SIZE = 16, 4, 8
#: Sessions with and without onnxruntime's weight pre-packing may round differently:
#: allow one test sample in 256 to flip.
ONE_SAMPLE = 1 / 256 + 1e-12


def prototype_data(n: int, seed: int):
    """Noisy copies of CLASSES fixed random patterns; the label is the pattern."""
    prototypes = np.random.default_rng(100).uniform(0, 1, (CLASSES, 1, SIZE, SIZE))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    x = prototypes[labels] + 0.3 * rng.standard_normal((n, 1, SIZE, SIZE))
    return x.astype(np.float32), labels.astype(np.int64)


def trained_classifier(seed: int = 0):
    """small_cnn with BatchNorm statistics of its data and a least-squares head: a stand-in for a trained model.

    Returns:
        ``(model, calibration data, test data)``.
    """
    model = small_cnn(seed=seed, with_bn=True, channels=CHANNELS, classes=CLASSES)
    x, y = prototype_data(256, seed=1)
    model = calibrate(model, {"input": x}, exclude="fc", method="paper").model  # BN statistics of the data
    probe = copy.deepcopy(model)
    probe.graph.output.append(onnx.helper.make_tensor_value_info("flat", onnx.TensorProto.FLOAT, ["N", CHANNELS]))
    features = Evaluator(probe, output="flat").session.run(["flat"], {"input": x})[0].astype(np.float64)
    mu, sd = features.mean(0), features.std(0) + 1e-6
    z = np.hstack([(features - mu) / sd, np.ones((len(x), 1))])
    solution = np.linalg.solve(z.T @ z + 1e-2 * np.eye(CHANNELS + 1), z.T @ (2 * np.eye(CLASSES)[y] - 1))
    weight = (solution[:-1] / sd[:, None]).T
    set_initializer(model, "fc_w", weight.astype(np.float32))
    set_initializer(model, "fc_b", (solution[-1] - weight @ mu).astype(np.float32))
    xt, yt = prototype_data(256, seed=2)
    return model, {"input": x}, {"input": xt, "labels": yt}


@pytest.fixture(scope="module")
def classifier():
    return trained_classifier()


def test_report_schema_one_row_per_eta_and_seed(classifier):
    model, calib, test = classifier
    report = sweep(model, calib, test, noise="mul", etas=[0.0, 0.5], seeds=[4, 9])
    data = json.loads(report.to_json())
    assert {"clean", "rows", "by_eta", "settings", "metric", "method"} <= set(data)
    assert [(r["eta"], r["seed"]) for r in data["rows"]] == [(0.0, 4), (0.0, 9), (0.5, 4), (0.5, 9)]
    assert all(set(r) == {"noise", "eta", "seed", "vanilla", "nabn"} for r in data["rows"])
    assert [(s["eta"], s["chips"]) for s in data["by_eta"]] == [(0.0, 2), (0.5, 2)]
    high = [r["vanilla"] for r in data["rows"] if r["eta"] == 0.5]
    assert data["by_eta"][1]["vanilla_mean"] == pytest.approx(np.mean(high))
    assert data["by_eta"][1]["vanilla_std"] == pytest.approx(np.std(high, ddof=1))
    rows = list(csv.DictReader(io.StringIO(report.to_csv())))
    assert len(rows) == 4 and set(rows[0]) == {"noise", "eta", "seed", "vanilla", "nabn", "clean"}
    assert "| small_cnn+NaBN |" in report.to_markdown()


def test_vanilla_without_noise_is_clean_and_nabn_wins_at_high_noise(classifier):
    model, calib, test = classifier
    report = sweep(model, calib, test, noise="mul", etas=[0.0, 0.5], seeds=3)
    assert report.clean > 0.7  # the stand-in model is a working classifier
    at = {s["eta"]: s for s in report.by_eta()}
    assert all(r["vanilla"] == report.clean for r in report.rows if r["eta"] == 0.0)
    assert at[0.5]["vanilla_mean"] < report.clean - 0.2  # the noise hurts ...
    assert at[0.5]["nabn_mean"] > at[0.5]["vanilla_mean"] + 0.2  # ... and calibration recovers most of it
    assert at[0.5]["nabn_mean"] > report.clean - 0.05


def test_same_seed_same_numbers_other_seed_other_chip(classifier):
    model, calib, test = classifier
    first = sweep(model, calib, test, noise="add", etas=[0.02], seeds=[5])
    again = sweep(model, calib, test, noise="add", etas=[0.02], seeds=[5])
    other = sweep(model, calib, test, noise="add", etas=[0.02], seeds=[6])
    assert first.rows == again.rows
    assert first.rows[0]["nabn"] != other.rows[0]["nabn"]


def test_session_reuse_gives_the_per_chip_numbers(classifier):
    model, calib, test = classifier
    reused = sweep(model, calib, test, noise="mul", etas=[0.3], seeds=2, reuse_sessions=True)
    fresh = sweep(model, calib, test, noise="mul", etas=[0.3], seeds=2, reuse_sessions=False)
    for a, b in zip(reused.rows, fresh.rows):
        assert a["vanilla"] == pytest.approx(b["vanilla"], abs=ONE_SAMPLE)
        assert a["nabn"] == pytest.approx(b["nabn"], abs=ONE_SAMPLE)


def test_sweep_rejects_bad_settings(classifier):
    model, calib, test = classifier
    with pytest.raises(NabnError, match="eta"):
        sweep(model, calib, test, noise="mul", etas=[-0.1], seeds=1)
    with pytest.raises(NabnError, match="unknown noise"):
        sweep(model, calib, test, noise="gauss", etas=[0.1], seeds=1)
    # a metric that gives several numbers is swept number by number (it used to be refused here);
    # where a sweep still needs one number, the refusal is the one it was
    several = sweep(model, calib, test, noise="mul", etas=[0.1], seeds=1, metric=["top1", "top2"])
    assert [r["metric"] for r in several.rows] == ["top1", "top2"] and several.metric == "top1,top2"
    with pytest.raises(NabnError, match="one number"):
        one_number({"top1": 0.5, "top2": 0.7})


def test_cli_sweep_writes_report_and_plot(classifier, tmp_path, capsys):
    model, calib, test = classifier
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", **calib)
    np.savez(tmp_path / "test.npz", **test)
    args = [
        "sweep",
        str(tmp_path / "m.onnx"),
        "--calib",
        str(tmp_path / "calib.npz"),
        "--test",
        str(tmp_path / "test.npz"),
        "--noise",
        "mul",
        "--eta",
        "0.1,0.5",
        "--seeds",
        "2",
    ]
    assert main([*args, "--report", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")]) == 0
    assert len(json.loads((tmp_path / "r.json").read_text())["rows"]) == 4
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert "swept 2 eta(s) x 2 chip(s)" in capsys.readouterr().out
    assert main([*args[:-4], "--eta", "0.1,abc", "--seeds", "1"]) == 1
    err = capsys.readouterr().err
    assert "comma-separated numbers" in err and len(err.strip().splitlines()) == 1
    assert main([*args, "--report", str(tmp_path / "r.txt")]) == 1
    assert "report must end in" in capsys.readouterr().err


def test_plot_without_matplotlib_names_the_extra(classifier, tmp_path, monkeypatch):
    from nabn_onnx.evaluation.plots import plot_sweep

    model, calib, test = classifier
    report = sweep(model, calib, test, noise="mul", etas=[0.1], seeds=1)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(NabnError, match=r"nabn-onnx\[plot\]"):
        plot_sweep(report, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_batching_errors_come_before_any_evaluation(tmp_path, monkeypatch):
    """A batch size calibration refuses is reported before the clean model is evaluated."""
    import importlib

    from nabn_onnx import DataError

    sweep_module = importlib.import_module("nabn_onnx.evaluation.sweep")

    model = tmp_path / "net.onnx"
    onnx.save(small_cnn(), str(model))
    data = tmp_path / "data.npz"
    np.savez(data, input=np.zeros((8, 1, 8, 8), np.float32), labels=np.zeros(8, np.int64))

    def no_evaluation(*args, **kwargs):
        raise AssertionError("the clean model was evaluated before the settings were checked")

    monkeypatch.setattr(sweep_module._ChipRunner, "run", no_evaluation)
    with pytest.raises(DataError, match="batch size 1 gives batches of 1 sample"):
        sweep(model, data, data, etas=[0.1], seeds=1, batch_size=1)
    with pytest.raises(DataError, match="max batches must be at least 1"):
        sweep(model, data, data, etas=[0.1], seeds=1, test_batches=0)


# -- several methods and several test sets in one sweep


def _one(report, method=None, test=None):
    """The rows of a several-method/test sweep for one method and test set, as a one-method sweep gives them."""
    keys = ("noise", "eta", "seed", "vanilla", "nabn")
    return [
        {k: r[k] for k in keys}
        for r in report.rows
        if (method is None or r["method"] == method) and (test is None or r["test"] == test)
    ]


def test_several_methods_give_per_method_the_numbers_of_one_method_sweeps(classifier):
    from nabn_onnx.evaluation import SweepPlan, SweepSettings, run_sweep

    model, calib, test = classifier
    plan = SweepPlan.of("add", [0.1, 0.3], [0, 1])  # where paper and delta differ on this model
    both = run_sweep(model, calib, test, plan, SweepSettings(method=("paper", "delta")))
    assert both.multi and both.method == "paper,delta"
    assert [(r["eta"], r["seed"], r["method"], r["test"]) for r in both.rows] == [
        (eta, seed, method, "test") for eta in (0.1, 0.3) for seed in (0, 1) for method in ("paper", "delta")
    ]
    for method in ("paper", "delta"):
        alone = run_sweep(model, calib, test, plan, SweepSettings(method=method))
        assert _one(both, method=method) == alone.rows
        assert both.clean == {"test": alone.clean}
    paper, delta = _one(both, method="paper"), _one(both, method="delta")
    assert [r["vanilla"] for r in paper] == [r["vanilla"] for r in delta]  # the same chips
    assert [r["nabn"] for r in paper] != [r["nabn"] for r in delta], "the methods must differ to mean anything"


def test_several_test_sets_give_per_set_the_numbers_of_one_set_sweeps(classifier, tmp_path):
    from nabn_onnx.evaluation import SweepPlan, SweepSettings, run_sweep

    model, calib, test = classifier
    xt, yt = prototype_data(128, seed=7)
    other = {"input": xt, "labels": yt}
    plan, settings = SweepPlan.of("add", [0.05], [3, 4]), SweepSettings(method="paper")
    both = sweep(model, calib, None, plan, settings, tests={"held-out": test, "other": other})
    for name, data in (("held-out", test), ("other", other)):
        alone = run_sweep(model, calib, data, plan, settings)
        assert _one(both, test=name) == alone.rows
        assert both.clean[name] == alone.clean
    stats = both.by_eta()
    assert [(s["test"], s["method"], s["chips"]) for s in stats] == [("held-out", "paper", 2), ("other", "paper", 2)]
    rows = list(csv.DictReader(io.StringIO(both.to_csv())))
    assert len(rows) == 4 and set(rows[0]) == {"noise", "eta", "seed", "vanilla", "nabn", "test", "method", "clean"}
    assert all(float(row["clean"]) == both.clean[row["test"]] for row in rows)
    assert [row["test"] for row in rows] == ["held-out", "other", "held-out", "other"]  # chip-major
    table = both.to_markdown()
    assert "| small_cnn | other |" in table and "| small_cnn+NaBN (paper) | held-out |" in table
    assert " on other" in both.summary() or " on held-out" in both.summary()
    from nabn_onnx.evaluation.plots import plot_sweep

    with pytest.raises(NabnError, match="this sweep has several"):
        plot_sweep(both, tmp_path / "p.png")


def test_a_one_method_tuple_is_the_one_method_sweep(classifier):
    model, calib, test = classifier
    plain = sweep(model, calib, test, noise="mul", etas=[0.4], seeds=2, method="paper")
    tupled = sweep(model, calib, test, noise="mul", etas=[0.4], seeds=2, method=["paper"])
    assert not tupled.multi and tupled.rows == plain.rows and tupled.method == "paper"


def test_a_several_method_sweep_resumes_from_its_results_file(classifier, tmp_path):
    from nabn_onnx.evaluation import SweepPlan, SweepSettings, run_sweep

    model, calib, test = classifier
    plan, settings = SweepPlan.of("mul", [0.5], [0, 1, 2]), SweepSettings(method=("paper", "delta"))
    xt, yt = prototype_data(64, seed=8)
    tests = {"a": test, "b": {"input": xt, "labels": yt}}
    results = tmp_path / "r.jsonl"
    whole = run_sweep(model, calib, None, plan, settings, tests=tests, results=results)
    lines = results.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["method"] == ["paper", "delta"] and set(header["test"]) == {"a", "b"}
    assert set(header["clean"]) == {"a", "b"}
    results.write_text("\n".join(lines[:2]) + "\n")  # one chip done, as if the sweep died
    resumed = run_sweep(model, calib, None, plan, settings, tests=tests, results=results, resume=True)
    assert resumed.resumed == 1 and resumed.rows == whole.rows
    with pytest.raises(NabnError, match="another method"):
        run_sweep(model, calib, None, plan, SweepSettings(method="paper"), tests=tests, results=results, resume=True)


def test_test_data_is_given_once(classifier):
    from nabn_onnx.evaluation import SweepPlan, run_sweep

    model, calib, test = classifier
    plan = SweepPlan.of("mul", [0.5], [0])
    with pytest.raises(TypeError, match="give one"):
        run_sweep(model, calib, test, plan, tests={"a": test})
    with pytest.raises(TypeError, match="needs test data"):
        run_sweep(model, calib, None, plan)
    with pytest.raises(NabnError, match="method must be"):
        sweep(model, calib, test, etas=[0.5], seeds=1, method=())


def test_sweep_is_run_sweep_with_keywords(classifier, tmp_path):
    from nabn_onnx.evaluation import SweepPlan, SweepSettings, run_sweep

    model, calib, test = classifier
    results = tmp_path / "r.jsonl"
    by_keywords = sweep(model, calib, test, noise="mul", etas=[0.4], seeds=2, method="paper", results=results)
    by_objects = run_sweep(model, calib, test, SweepPlan.of("mul", [0.4], 2), SweepSettings(method="paper"))
    assert by_keywords.rows == by_objects.rows
    again = sweep(model, calib, test, noise="mul", etas=[0.4], seeds=2, method="paper", results=results, resume=True)
    assert again.resumed == 2 and again.rows == by_objects.rows


def test_a_several_method_sweep_says_which_statistics_each_method_wrote(classifier):
    """``chosen`` per row (what auto picked; a plain method writes its own), only when several methods ran."""
    from nabn_onnx.calibration import CANDIDATES
    from nabn_onnx.evaluation import SweepPlan, SweepSettings, run_sweep

    model, calib, test = classifier
    plan = SweepPlan.of("mul", [0.5], [0, 1])
    both = run_sweep(model, calib, test, plan, SweepSettings(method=("paper", "auto")))
    assert [r["chosen"] for r in both.rows if r["method"] == "paper"] == ["paper", "paper"]
    assert all(r["chosen"] in CANDIDATES for r in both.rows if r["method"] == "auto")
    alone = run_sweep(model, calib, test, plan, SweepSettings(method="auto"))
    assert all("chosen" not in r for r in alone.rows)  # one method: the rows are as they were


def test_a_several_number_metric_gives_per_metric_the_numbers_of_one_metric_sweeps(classifier, tmp_path):
    from nabn_onnx.evaluation import SweepPlan, SweepSettings, run_sweep

    model, calib, test = classifier
    plan = SweepPlan.of("mul", [0.3, 0.6], [0, 1])
    results = tmp_path / "r.jsonl"
    both = run_sweep(model, calib, test, plan, SweepSettings(method="paper", metric="top1,top2"), results=results)
    assert both.multi and both.several_metrics and both.metric == "top1,top2"
    assert [(r["eta"], r["seed"], r["metric"]) for r in both.rows] == [
        (eta, seed, metric) for eta in (0.3, 0.6) for seed in (0, 1) for metric in ("top1", "top2")
    ]
    for metric in ("top1", "top2"):
        alone = run_sweep(model, calib, test, plan, SweepSettings(method="paper", metric=metric))
        assert [{k: r[k] for k in ROW_KEYS} for r in both.rows if r["metric"] == metric] == alone.rows
        assert both.clean == {"test": {"top1": both.clean_of(metric="top1"), "top2": both.clean_of(metric="top2")}}
        assert both.clean_of("test", metric) == alone.clean
    top1 = [r["nabn"] for r in both.rows if r["metric"] == "top1"]
    top2 = [r["nabn"] for r in both.rows if r["metric"] == "top2"]
    assert top1 != top2, "the metrics must differ to mean anything"
    as_tuple = run_sweep(model, calib, test, plan, SweepSettings(method="paper", metric=("top1", "top2")))
    assert as_tuple.rows == both.rows
    stats = both.by_eta()
    assert [(s["eta"], s["metric"], s["chips"]) for s in stats] == [
        (eta, metric, 2) for eta in (0.3, 0.6) for metric in ("top1", "top2")
    ]
    rows = list(csv.DictReader(io.StringIO(both.to_csv())))
    assert len(rows) == 8 and "metric" in rows[0]
    assert all(float(row["clean"]) == both.clean_of(row["test"], row["metric"]) for row in rows)
    markdown = both.to_markdown()
    assert "| Model (top1) | test |" in markdown and "| Model (top2) | test |" in markdown
    assert "(top" in both.summary()
    header = json.loads(results.read_text().splitlines()[0])
    assert header["metric"] == "top1,top2" and header["clean"] == both.clean
    lines = results.read_text().splitlines()
    results.write_text("\n".join(lines[:3]) + "\n")  # two chips done, as if the sweep died
    resumed = run_sweep(
        model, calib, test, plan, SweepSettings(method="paper", metric="top1,top2"), results=results, resume=True
    )
    assert resumed.resumed == 2 and resumed.rows == both.rows
