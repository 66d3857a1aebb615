"""The command line, end to end on files."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from nabn_onnx.cli import main
from nabn_onnx.model import read_record

from builders import images, run, small_cnn


@pytest.fixture()
def files(tmp_path):
    model = tmp_path / "net.onnx"
    onnx.save(small_cnn(), str(model))
    data = tmp_path / "calib.npz"
    np.savez(data, input=images(200), labels=np.zeros(200, np.int64))
    return model, data


def test_split_inject_calibrate_inspect(files, capsys):
    model, data = files
    assert main(["split", str(model), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "split 4 layer(s), 0 skipped, measured statistics" in out
    assert (model.parent / "net.split.onnx").is_file()

    assert main(["inject", str(model), "--noise", "mul", "--eta", "0.1", "--seed", "3"]) == 0
    assert "into 4 weight tensor(s)" in capsys.readouterr().out
    noisy = onnx.load(str(model.parent / "net.mul0.1.seed3.onnx"))
    assert read_record(noisy, "inject")["seed"] == 3

    report = model.parent / "report.json"
    code = main(
        [
            "calibrate",
            str(model),
            "--data",
            str(data),
            "--noise",
            "mul",
            "--eta",
            "0.1",
            "--seed",
            "3",
            "--batch-size",
            "50",
            "--report",
            str(report),
        ]
    )
    assert code == 0
    line = capsys.readouterr().out
    assert "calibrated 4 BatchNorm layer(s) (4 inserted)" in line and "4 batch(es) / 200 samples" in line
    calibrated = onnx.load(str(model.parent / "net.nabn.onnx"))
    assert sum(n.op_type == "BatchNormalization" for n in calibrated.graph.node) == 4
    assert '"method": "auto"' in report.read_text()

    assert main(["inspect", str(model.parent / "net.nabn.onnx")]) == 0
    assert "4 with an inserted one" in capsys.readouterr().out


def test_calibrate_reports_what_it_bought(files, capsys, tmp_path):
    _, data = files
    model = tmp_path / "wide.onnx"
    onnx.save(small_cnn(channels=16), str(model))
    x = images(400, seed=5)
    test = tmp_path / "test.npz"
    # labels = the clean model's own predictions, so it scores 100% and the noise is what costs
    np.savez(test, input=x, labels=run(small_cnn(channels=16), {"input": x})[0].argmax(1))
    report = tmp_path / "gain.json"
    assert (
        main(
            [
                "calibrate",
                str(model),
                "--data",
                str(data),
                "--test",
                str(test),
                "--noise",
                "mul",
                "--eta",
                "0.3",
                "--report",
                str(report),
            ]
        )
        == 0
    )
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("top1 on test.npz: clean 100.0%, noisy chip ") and "calibrated" in line
    gain = json.loads(report.read_text())["test"]
    assert gain["metric"] == "top1" and gain["clean"] == 1.0
    assert gain["calibrated"] > gain["noisy"]


def test_quiet_prints_nothing(files, capsys):
    model, data = files
    assert (
        main(
            [
                "calibrate",
                str(model),
                "--data",
                str(data),
                "--noise",
                "mul",
                "--eta",
                "0.1",
                "-q",
                "-o",
                str(model.parent / "q.onnx"),
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == ""


def test_user_errors_are_one_line_exit_1_and_write_nothing(files, capsys):
    model, data = files
    before = model.read_bytes()
    assert main(["calibrate", str(model), "--data", str(model.parent / "missing.npz")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data file not found" in err
    assert main(["calibrate", str(model), "--data", str(data), "-o", str(model)]) == 1
    assert "refusing to overwrite the input model" in capsys.readouterr().err
    assert main(["inject", str(model), "--noise", "mul", "--eta", "-1"]) == 1
    assert "eta must be" in capsys.readouterr().err
    assert model.read_bytes() == before
    assert sorted(p.name for p in model.parent.iterdir()) == ["calib.npz", "net.onnx"]


def test_argument_errors_exit_2(files):
    model, _ = files
    with pytest.raises(SystemExit) as info:
        main(["inject", str(model), "--noise", "mul"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["calibrate", str(model)])
    assert info.value.code == 2


def test_library_calls_refuse_to_overwrite_their_input(files):
    from nabn_onnx import ModelError, calibrate, inject, make_noise, split

    model, data = files
    before = model.read_bytes()
    for call in (
        lambda: split(model, output=model),
        lambda: inject(model, make_noise("mul", 0.1), output=model),
        lambda: calibrate(model, data, output=model),
    ):
        with pytest.raises(ModelError, match="refusing to overwrite the input model"):
            call()
    assert model.read_bytes() == before


@pytest.mark.parametrize("command", ["inject", "sweep"])
def test_paper_spreads_with_a_device_model_are_refused(files, capsys, command):
    """--sigma-t/--sigma-s/--temporal mean nothing to pcm/rram: a usage error, not silently ignored."""
    model, data = files
    args = [command, str(model), "--noise", "pcm", "--sigma-t", "0.5"]
    if command == "sweep":
        args += ["--calib", str(data), "--test", str(data)]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert "--sigma-t apply to the paper's mul/add noise, not to the device model 'pcm'" in capsys.readouterr().err


def test_calib_batches_is_the_spelling_of_sweep_check_and_drift(caplog):
    """One spelling per concept: the library's calib_batches is --calib-batches; --max-batches still works there."""
    from nabn_onnx.cli import build_parser

    parser = build_parser()
    base = ["--calib", "c.npz", "--test", "t.npz"]
    for command in ("sweep", "drift"):
        assert parser.parse_args([command, "m.onnx", *base, "--calib-batches", "3"]).calib_batches == 3
        with caplog.at_level("WARNING"):
            assert parser.parse_args([command, "m.onnx", *base, "--max-batches", "2"]).calib_batches == 2
        assert "--max-batches is renamed --calib-batches" in caplog.text
        caplog.clear()
    check = ["check", "m.onnx", "--data", "c.npz", "--test", "t.npz", "--min", "top1=0.5"]
    assert parser.parse_args([*check, "--calib-batches", "4"]).calib_batches == 4
    assert "--calib-batches" not in parser.parse_args(["calibrate", "m.onnx", "--data", "c.npz"]).__dict__
