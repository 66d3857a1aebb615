"""Drift over time: the five columns of nabn-onnx drift, checked against direct computations."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from nabn_onnx import NabnError, evaluate, inject, make_noise
from nabn_onnx.cli import main
from nabn_onnx.evaluation.drift import drift_sweep, parse_times, time_label

from builders import images, run, small_cnn

YEAR = 365 * 86400.0


@pytest.fixture(scope="module")
def task():
    """A BatchNorm model and data labelled by the clean model itself (clean top-1 = 100 %)."""
    model = small_cnn(with_bn=True, seed=5)
    calib = images(64, seed=6)
    test = images(64, seed=7)
    labels = run(model, {"input": test})[0].argmax(1)
    return model, {"input": calib}, {"input": test, "labels": labels}


def test_parse_times():
    assert parse_times("1s,1h,1d,1mo,1y") == [1.0, 3600.0, 86400.0, 30 * 86400.0, YEAR]
    assert parse_times("20, 2.5min") == [20.0, 150.0]
    assert [time_label(t) for t in (1.0, 3600.0, 86400.0, 30 * 86400.0, YEAR, 90.0)] == [
        "1s",
        "1h",
        "1d",
        "1mo",
        "1y",
        "90s",
    ]
    for bad in ("", "1x", "-5", "abc,1h"):
        with pytest.raises(NabnError):
            parse_times(bad)


def test_drift_columns(task):
    model, calib, test = task
    device = make_noise("pcm", eta=2.0)
    report = drift_sweep(
        model,
        calib,
        test,
        device=device,
        times=[1.0, YEAR],
        seeds=[4],
        batch_size=16,
        warmup=2,
        momentum=0.8,
        method="paper",
    )
    assert report.clean == 1.0
    first, last = report.rows
    # calibrated once at the first time: the same model as calibrated each time, there
    assert first["nabn_once"] == first["nabn_each"]
    # the columns are what they say: the chip at t as is, and with global drift compensation
    chip = make_noise("pcm", eta=2.0, seed=4, t_inference=YEAR)
    assert last["vanilla"] == evaluate(inject(model, chip).model, test, batch_size=16)
    gdc = make_noise("pcm", eta=2.0, seed=4, t_inference=YEAR, compensation="global")
    assert last["gdc"] == evaluate(inject(model, gdc).model, test, batch_size=16)
    # a year of drift: the stored statistics no longer fit, recalibration (at t or while serving) restores them
    assert last["vanilla"] < 0.5
    assert last["nabn_each"] > last["vanilla"] + 0.3
    assert last["dynamic"] > last["vanilla"] + 0.3
    assert "1y" in report.table() and len(report.by_time()) == 2


def test_drift_refuses_paper_models_and_unmeasured_rram_times(task):
    model, calib, test = task
    with pytest.raises(NabnError, match="device model"):
        drift_sweep(model, calib, test, device=make_noise("mul", 0.05), times=[1.0])
    with pytest.raises(NabnError, match="86400"):
        drift_sweep(model, calib, test, device=make_noise("rram"), times=[3600.0])


def test_drift_cli_writes_report(tmp_path, task, capsys):
    model, calib, test = task
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", **calib)
    np.savez(tmp_path / "t.npz", **test)
    code = main(
        [
            "drift",
            str(tmp_path / "m.onnx"),
            "--calib",
            str(tmp_path / "c.npz"),
            "--test",
            str(tmp_path / "t.npz"),
            "--times",
            "1s,1d",
            "--seeds",
            "1",
            "--method",
            "paper",
            "--batch-size",
            "32",
            "--warmup",
            "1",
            "--levels",
            "64",
            "--report",
            str(tmp_path / "r.json"),
            "-q",
        ]
    )
    assert code == 0
    payload = json.loads((tmp_path / "r.json").read_text())
    assert payload["device"]["noise"] == "pcm" and payload["device"]["levels"] == 64
    assert [row["t"] for row in payload["rows"]] == [1.0, 86400.0]


def test_a_drift_config_is_its_keywords(task):
    from nabn_onnx.evaluation import DriftConfig

    model, calib, test = task
    keywords = dict(device=make_noise("pcm", eta=2.0), times=[1.0, YEAR], seeds=[4], batch_size=16, method="paper")
    config = DriftConfig(**keywords)
    assert DriftConfig.build(None, dict(keywords)) == config
    by_object = drift_sweep(model, calib, test, config)
    by_keywords = drift_sweep(model, calib, test, **keywords)
    assert by_object.rows == by_keywords.rows and by_object.to_csv() == by_keywords.to_csv()
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'max_batches'.*calib_batches"):
        drift_sweep(model, calib, test, max_batches=2)


def test_drift_report_formats(task, tmp_path):
    from nabn_onnx.evaluation import DriftReport

    report = DriftReport("m", "top1", {"noise": "pcm"}, 1.0, 1.0, 0.9, 2)
    columns = ("vanilla", "gdc", "nabn_once", "nabn_once_gdc", "nabn_each", "dynamic")
    report.rows = [{"t": 1.0, "seed": 0, **dict.fromkeys(columns, 0.5)}]
    report.write(tmp_path / "r.csv")
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines == ["t,seed," + ",".join(columns), "1.0,0,0.5,0.5,0.5,0.5,0.5,0.5"]
    assert json.loads(report.write(tmp_path / "r.json").read_text())["rows"] == report.rows
    with pytest.raises(NabnError, match=r"report must end in \.json, \.md or \.csv, got r\.txt"):
        report.write(tmp_path / "r.txt")
