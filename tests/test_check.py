"""The robustness gate on the sample ResNet: verdicts against an independent inject/calibrate/evaluate
path, exit codes, and the JSON and JUnit XML it writes."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from nabn_onnx import NabnError, Threshold, calibrate, check, evaluate, inject, make_noise
from nabn_onnx.cli import main
from nabn_onnx.evaluation.check import parse_threshold

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
MODEL = SAMPLES / "resnet_fused.onnx"
CALIB = SAMPLES / "digits_calib.npz"
TEST = SAMPLES / "digits_test.npz"
ETA, SEEDS, CALIB_BATCHES = 0.05, (0, 1), 2
#: The sweep and the reference path evaluate the same weights with sessions built the same
#: way; allow one test sample (of 500) to flip in case onnxruntime rounds differently.
ONE_SAMPLE = 1 / 500 + 1e-12
SWEEP = dict(noise="mul", etas=[ETA], seeds=list(SEEDS), method="paper", calib_batches=CALIB_BATCHES)


def _error_rate(outputs: np.ndarray, labels: np.ndarray) -> float:
    """A metric where lower is better: the fraction of wrong top-1 predictions."""
    return float(np.mean(np.asarray(outputs).argmax(axis=1) != labels))


@pytest.fixture(scope="module")
def reference():
    """Per seed: top-1 of the noisy chip as it is, and after calibration, computed without the sweep."""
    values = {}
    for seed in SEEDS:
        noise = make_noise("mul", ETA, seed=seed)
        vanilla = evaluate(inject(str(MODEL), noise).model, str(TEST))
        calibrated = calibrate(str(MODEL), str(CALIB), noise=noise, method="paper", max_batches=CALIB_BATCHES).model
        values[seed] = {"vanilla": vanilla, "nabn": evaluate(calibrated, str(TEST))}
    return values


@pytest.fixture(scope="module")
def uncalibrated():
    # two bounds on top1 (one sweep) and one upper bound on a custom lower-is-better metric (a second sweep)
    return check(
        str(MODEL), str(CALIB), str(TEST), ["top1>=0.95", "top1=90%", Threshold(_error_rate, 0.1, "max")], **SWEEP
    )


def test_reference_straddles_the_thresholds(reference):
    """The thresholds below are meaningful only if the chips sit between them: 0.9 <= vanilla < 0.95 <= nabn."""
    for values in reference.values():
        assert 0.9 <= values["vanilla"] < 0.95 <= values["nabn"]


def test_uncalibrated_values_and_verdicts(uncalibrated, reference):
    report = uncalibrated
    assert not report.passed and not report.calibrated
    assert report.chips == len(SEEDS) and len(report.results) == 3 * len(SEEDS)
    for r in report.results:
        top1 = reference[r.seed]["vanilla"]
        if r.metric == "top1":
            assert r.value == pytest.approx(top1, abs=ONE_SAMPLE)
        else:
            assert r.metric == "_error_rate" and r.kind == "max"
            assert r.value == pytest.approx(1 - top1, abs=ONE_SAMPLE)
        assert r.passed == (r.value >= r.bound if r.kind == "min" else r.value <= r.bound)
    failed = {(r.seed, r.condition) for r in report.failures}
    assert failed == {(seed, "top1 >= 0.95") for seed in SEEDS}
    assert set(report.clean) == {"top1", "_error_rate"}
    assert report.clean["top1"] == pytest.approx(1 - report.clean["_error_rate"])
    assert "FAILED (2 of 6 checks)" in report.summary()


def test_calibrated_chips_pass(reference):
    report = check(str(MODEL), str(CALIB), str(TEST), "top1>=0.95", calibrated=True, **SWEEP)
    assert report.passed and report.failures == []
    for r in report.results:
        assert r.value == pytest.approx(reference[r.seed]["nabn"], abs=ONE_SAMPLE)
    assert report.summary().startswith("check PASSED: 2 calibrated chip(s) of resnet_fused against top1 >= 0.95")


def test_json_report(uncalibrated, tmp_path):
    data = json.loads(uncalibrated.write(tmp_path / "gate.json").read_text())
    assert data["passed"] is False and data["calibrated"] is False
    assert (data["chips"], data["checks"], data["failures"]) == (2, 6, 2)
    assert data["settings"]["etas"] == [ETA] and data["settings"]["seeds"] == list(SEEDS)
    assert data["version"] and set(data["sweeps"]) == {"top1", "_error_rate"}
    rows = {row["seed"]: row for row in data["sweeps"]["top1"]["rows"]}
    for result in data["results"]:
        expected = rows[result["seed"]]["vanilla"]
        if result["metric"] == "top1":
            assert result["value"] == expected
    assert sum(not r["passed"] for r in data["results"]) == 2


# What JUnit consumers accept, from Jenkins' junit-10.xsd (the schema of the xunit plugin,
# which Surefire, pytest and most CI reporters follow): required and allowed attributes.
_JUNIT = {
    "testsuites": (set(), {"name", "time", "tests", "failures", "errors"}),
    "testsuite": (
        {"name", "tests", "failures", "errors"},
        {"group", "time", "skipped", "timestamp", "hostname", "id", "package", "file", "log", "url"},
    ),
    "testcase": ({"name"}, {"time", "classname", "group"}),
    "failure": (set(), {"type", "message"}),
    "property": ({"name", "value"}, set()),
}
_CHILDREN = {
    "testsuites": {"testsuite"},
    "testsuite": {"testsuite", "properties", "testcase", "system-out", "system-err"},
    "testcase": {"skipped", "error", "failure", "system-out", "system-err"},
    "properties": {"property"},
}
_SUREFIRE_TIME = re.compile(r"(([0-9]{0,3},)*[0-9]{3}|[0-9]{0,3})*(\.[0-9]*)?")


def _validate_junit(element: ET.Element) -> None:
    if element.tag in _JUNIT:
        required, optional = _JUNIT[element.tag]
        assert required <= set(element.attrib), (element.tag, element.attrib)
        assert set(element.attrib) <= required | optional, (element.tag, element.attrib)
    if element.tag in ("testsuites", "testsuite") and "time" in element.attrib:
        assert _SUREFIRE_TIME.fullmatch(element.attrib["time"])
    for child in element:
        assert child.tag in _CHILDREN.get(element.tag, set()), (element.tag, child.tag)
        _validate_junit(child)


def test_junit_xml(uncalibrated, tmp_path):
    path = uncalibrated.write(tmp_path / "results.xml")
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    _validate_junit(root)
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    failed = [c for c in cases if c.find("failure") is not None]
    assert len(cases) == 6 and len(failed) == 2
    for element in (root, suite):
        assert (element.get("tests"), element.get("failures"), element.get("errors")) == ("6", "2", "0")
    names = {c.get("name") for c in failed}
    assert names == {f"mul eta={ETA:g} seed={s}: top1 >= 0.95" for s in SEEDS}
    for case in failed:
        message = case.find("failure").get("message")
        value = float(message.split()[1])
        assert value < 0.95 and "does not meet top1 >= 0.95" in message
    assert all(float(c.get("time")) >= 0 for c in cases)
    properties = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert properties["calibrated"] == "false" and properties["noise"] == "mul"
    assert float(properties["clean.top1"]) == pytest.approx(uncalibrated.clean["top1"], abs=1e-6)


def _cli(*extra):
    return [
        "check",
        str(MODEL),
        "--data",
        str(CALIB),
        "--test",
        str(TEST),
        "--noise",
        "mul",
        "--eta",
        str(ETA),
        "--seeds",
        "1",
        "--method",
        "paper",
        "--max-batches",
        str(CALIB_BATCHES),
        *extra,
    ]


def test_cli_exit_codes_and_outputs(tmp_path, capsys, reference):
    junit, report = tmp_path / "results.xml", tmp_path / "gate.json"
    assert main(_cli("--min", "top1=0.95", "--junit", str(junit), "--report", str(report))) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"FAIL mul eta={ETA:g} seed=0: top1 {reference[0]['vanilla']:.4f}, needs >= 0.95"
    assert lines[1].startswith("check FAILED (1 of 1 checks)")
    assert json.loads(report.read_text())["failures"] == 1
    assert ET.parse(junit).getroot().get("failures") == "1"

    assert main(_cli("--min", "top1=95%", "--max", "top1=1", "--calibrated", "-q", "--report", str(report))) == 0
    assert capsys.readouterr().out == ""
    data = json.loads(report.read_text())
    assert data["passed"] and data["calibrated"] and data["checks"] == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        ((), "give at least one threshold"),
        (("--min", "top1"), "NAME=VALUE"),
        (("--min", "top1=high"), "must be a number"),
        (("--min", "recall=0.9"), "unknown metric"),
        (("--min", "top1=0.9", "--report", "gate.txt"), "must end in .json"),
        (("--min", "top1=0.9", "--junit", "gate.json"), "must end in .xml"),
    ],
)
def test_cli_usage_errors_exit_2(extra, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(_cli(*extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("nabn-onnx check: error:") and message in err and err.count("\n") == 1


def test_cli_missing_file_and_argparse_errors_exit_2(tmp_path, capsys):
    args = _cli("--min", "top1=0.9")
    args[3] = str(tmp_path / "missing.npz")
    assert main(args) == 2
    assert "missing.npz" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["check", str(MODEL), "--data", str(CALIB), "--test", str(TEST), "--eta", "0.1", "--min", "top1=0.9"])
    assert exc.value.code == 2  # --noise is required


def test_parse_threshold():
    assert parse_threshold("top1=0.95") == Threshold("top1", 0.95, "min")
    assert parse_threshold("TOP5 = 99%") == Threshold("top5", 0.99, "min")
    assert parse_threshold("miou=0.5", "max") == Threshold("miou", 0.5, "max")
    assert parse_threshold("err<=0.1") == Threshold("err", 0.1, "max")
    assert parse_threshold("top1>=0.9", "max").kind == "min"
    for bad in ("top1", "=0.9", "top1=", "top1=0.9=1", "top1=nan"):
        with pytest.raises(NabnError):
            parse_threshold(bad)
    with pytest.raises(NabnError):
        Threshold("top1", 0.9, "at least")
    assert not Threshold("top1", 0.9).holds(math.nan) and not Threshold("e", 0.9, "max").holds(math.nan)
    assert Threshold("top1", 0.9).holds(0.9) and Threshold("e", 0.1, "max").holds(0.1)


def test_library_refuses_a_metric_argument_and_no_thresholds():
    with pytest.raises(NabnError, match="thresholds"):
        check(str(MODEL), str(CALIB), str(TEST), "top1>=0.9", metric="top5", **SWEEP)
    with pytest.raises(NabnError, match="at least one threshold"):
        check(str(MODEL), str(CALIB), str(TEST), [], **SWEEP)


def _segmenter(classes: int = 4, channels: int = 8, seed: int = 0):
    """Conv-ReLU-Conv 1x1 per-pixel classifier: (N, 1, 8, 8) -> logits (N, classes, 8, 8)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.normal(0, 0.8, (channels, 1, 3, 3)),
        "b1": rng.normal(0, 0.1, channels),
        "w2": rng.normal(0, 0.8, (classes, channels, 1, 1)),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["logits"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes,
        "segmenter",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes, 8, 8])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _miou_without_background(predicted: np.ndarray, labels: np.ndarray, classes: int) -> float:
    """The paper's mIoU by hand: pixels labelled 0 left out, mean over classes 1.. that occur."""
    keep = labels != 0
    ious = []
    for c in range(1, classes):
        hit_p, hit_l = (predicted == c) & keep, (labels == c) & keep
        union = (hit_p | hit_l).sum()
        if union:
            ious.append((hit_p & hit_l).sum() / union)
    return float(np.mean(ious))


def test_segmentation_metric_against_a_hand_computed_miou():
    """Any metric sweep takes works in a gate: mIoU on per-pixel logits, checked against numpy."""
    import onnxruntime as ort

    model = _segmenter()
    x = np.random.default_rng(5).uniform(0, 1, (64, 1, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    labels = session.run(None, {"input": x})[0].argmax(axis=1).astype(np.int64)  # clean mIoU is 1 by construction
    data = {"input": x, "labels": labels}
    report = check(
        model,
        {"input": x},
        data,
        ["miou>=0.99", "miou<=0.999"],
        noise="mul",
        etas=[0.5],
        seeds=[0, 1],
        method="paper",
        batch_size=32,
    )
    assert report.clean == {"miou": pytest.approx(1.0)}
    for seed in (0, 1):
        noisy = inject(model, make_noise("mul", 0.5, seed=seed)).model
        noisy_session = ort.InferenceSession(noisy.SerializeToString(), providers=["CPUExecutionProvider"])
        predicted = noisy_session.run(None, {"input": x})[0].argmax(axis=1)
        expected = _miou_without_background(predicted, labels, 4)
        values = [r.value for r in report.results if r.seed == seed]
        assert values == [pytest.approx(expected, abs=1e-9)] * 2
        assert expected < 0.99  # the noisy chip misses the lower bound and meets the upper one
    assert [(r.kind, r.passed) for r in report.results] == [("min", False), ("max", True)] * 2


def test_the_gate_runs_its_chips_in_local_processes_with_the_same_numbers(uncalibrated, capsys, tmp_path):
    """``--jobs 2`` runs the same chips on the process executor: the same values, the same verdict."""
    report = tmp_path / "jobs.json"
    code = main(
        [
            "check",
            str(MODEL),
            "--data",
            str(CALIB),
            "--test",
            str(TEST),
            "--noise",
            "mul",
            "--eta",
            str(ETA),
            "--seeds",
            ",".join(map(str, SEEDS)) + ",",
            "--method",
            "paper",
            "--max-batches",
            str(CALIB_BATCHES),
            "--min",
            "top1>=0.95",
            "--jobs",
            "2",
            "--report",
            str(report),
            "-q",
        ]
    )
    capsys.readouterr()
    serial = {(r["seed"], r["bound"]): r["value"] for r in uncalibrated.to_dict()["results"] if r["metric"] == "top1"}
    parallel = {(r["seed"], r["bound"]): r["value"] for r in json.loads(report.read_text())["results"]}
    assert parallel and all(parallel[key] == serial[key] for key in parallel)
    assert code == (0 if all(v >= 0.95 for v in parallel.values()) else 1)


def test_a_check_config_is_its_keywords(uncalibrated):
    """CheckConfig (plan, sweep settings, calibrated) gives what its flat keywords give."""
    from nabn_onnx.evaluation import CheckConfig, SweepPlan, SweepSettings

    config = CheckConfig(
        SweepPlan.of("mul", [ETA], list(SEEDS)), SweepSettings(method="paper", calib_batches=CALIB_BATCHES)
    )
    assert CheckConfig.build(None, dict(SWEEP)) == config
    report = check(str(MODEL), str(CALIB), str(TEST), ["top1>=0.95"], config)
    top1 = [r for r in uncalibrated.results if r.metric == "top1" and r.bound == 0.95]
    assert [(r.seed, r.value, r.passed) for r in report.results] == [(r.seed, r.value, r.passed) for r in top1]
    assert CheckConfig.build(config, {"calibrated": True}).calibrated


def test_check_refuses_unknown_keywords_and_several_methods():
    with pytest.raises(TypeError, match="unexpected keyword argument 'calibration_batches'"):
        check(str(MODEL), str(CALIB), str(TEST), "top1>=0.9", etas=[ETA], calibration_batches=2)
    with pytest.raises(TypeError, match=r"check\(\) needs etas="):
        check(str(MODEL), str(CALIB), str(TEST), "top1>=0.9", seeds=2)
    with pytest.raises(NabnError, match="one method"):
        check(str(MODEL), str(CALIB), str(TEST), "top1>=0.9", etas=[ETA], seeds=1, method=("paper", "delta"))
