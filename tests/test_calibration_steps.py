"""Where a chip's time goes: the report's per-step timings and ``calibrate -v``'s table (issue 19, item 4)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

import nabn_onnx as nb
from nabn_onnx.cli import main

ROOT = Path(__file__).resolve().parent.parent
FUSED = ROOT / "sample_models" / "resnet_fused.onnx"
CALIB = ROOT / "sample_models" / "digits_calib.npz"


def test_auto_on_a_fused_model_times_every_step_it_ran():
    result = nb.calibrate(str(FUSED), str(CALIB), noise=nb.make_noise("mul", 0.1), batch_size=64, max_batches=4)
    steps = result.report.steps
    assert list(steps)[:3] == ["check", "prepare", "measure_inserted"]
    for name in ("measure_inserted", "measure_clean", "measure_noisy", "choose", "write_back"):
        assert steps[name] >= 0.0, name
    assert steps["measure_noisy"] > 0.0 and steps["choose"] > 0.0
    assert sum(steps.values()) <= result.report.seconds + 1e-6
    assert result.report.to_dict()["steps"] == {k: round(v, 3) for k, v in steps.items()}


def test_steps_with_nothing_to_do_are_left_out(tmp_path: Path):
    """paper: no clean pass; a measured split only where BatchNorms were inserted; no noise on a chip."""
    onnx.save(onnx.load(ROOT / "sample_models" / "resnet_bn.onnx"), tmp_path / "m.onnx")
    data = {"input": np.load(CALIB)["input"][:32]}
    report = nb.calibrate(
        str(tmp_path / "m.onnx"), data, noise=nb.make_noise("mul", 0.1), method="paper", batch_size=8
    ).report
    assert "measure_noisy" in report.steps and "put_noise" in report.steps
    assert ("measure_inserted" in report.steps) == bool(report.inserted)
    assert "measure_clean" not in report.steps and "clean_session" not in report.steps
    chip = nb.calibrate(str(tmp_path / "m.onnx"), data, method="paper", batch_size=8).report
    assert "put_noise" not in chip.steps


def test_calibrate_verbose_prints_the_steps_and_the_report_records_them(tmp_path: Path, capsys):
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    argv = ["calibrate", str(FUSED), "--data", str(CALIB), "--noise", "mul", "--eta", "0.1", "--max-batches", "2"]
    assert main([*argv, "-o", str(out), "--report", str(report), "-v"]) == 0
    printed = capsys.readouterr().out.splitlines()
    table = printed[printed.index("time by step:") + 1 :]
    names = [line.split()[0] for line in table]
    assert names[:3] == ["check", "prepare", "measure_inserted"] and "choose" in names
    assert all(line.rstrip().endswith("%") for line in table)
    recorded = json.loads(report.read_text())["steps"]
    assert list(recorded) == names
    assert main([*argv, "-o", str(tmp_path / "q.onnx"), "-q"]) == 0
    assert "time by step" not in capsys.readouterr().out
    assert np.isfinite(list(recorded.values())).all()
