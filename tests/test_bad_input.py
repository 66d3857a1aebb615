"""Bad input, everywhere: every user mistake gives one line on stderr, exit 1 (2 for usage
errors), no output file and an untouched input folder.

Each case runs ``nabn_onnx.cli.main`` in a fresh folder holding a good model, good data and
the bad thing; the folder is fingerprinted (names, sizes, mtimes, bytes) before and after,
so a half-written output, a leftover temporary folder or a touched input all fail the test.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from nabn_onnx import ModelError, load_model
from nabn_onnx.cli import main

from builders import images, small_cnn

COMMANDS = ("split", "inject", "calibrate", "inspect")
WRITERS = ("split", "inject", "calibrate")
SAMPLES = 32
BATCH = 8


# --------------------------------------------------------------------------- helpers


def _fingerprint(folder: Path) -> Dict[str, Tuple[int, int, str]]:
    """Every file and folder under ``folder``: size, mtime and a hash of its bytes."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = (0, 0, "link:" + os.readlink(path))
        elif path.is_dir():
            out[rel] = (0, 0, "dir")
        else:
            stat = path.stat()
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except PermissionError:
                digest = "unreadable"
            out[rel] = (stat.st_size, stat.st_mtime_ns, digest)
    return out


def _cli(capsys, argv: List[str]) -> Tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _expect_error(capsys, folder: Path, argv: List[str], *, words: Tuple[str, ...] = (), code: int = 1) -> str:
    """Run the CLI, check the one-line error and that ``folder`` did not change; return the line."""
    before = _fingerprint(folder)
    rc, _out, err = _cli(capsys, argv)
    after = _fingerprint(folder)
    lines = err.strip().splitlines()
    assert rc == code, f"exit {rc} (wanted {code}); stderr: {err!r}"
    if code == 1:
        assert len(lines) == 1, f"wanted exactly one stderr line, got {lines!r}"
        assert lines[0].startswith(f"nabn-onnx {argv[0]}: error: "), lines[0]
        assert "Traceback" not in err
        for word in words:
            assert word.lower() in lines[0].lower(), f"{word!r} not in {lines[0]!r}"
    else:  # argparse: usage plus one error line
        assert lines and lines[-1].startswith("nabn-onnx"), lines
        assert "error:" in lines[-1]
    assert after == before, f"the folder changed: {set(after) ^ set(before) or 'a file was modified'}"
    return lines[-1] if lines else ""


def _extra_args(command: str, folder: Path) -> List[str]:
    """What each command needs besides the model to run (good values)."""
    if command == "inject":
        return ["--noise", "mul", "--eta", "0.05", "-o", folder / "out.onnx"]
    if command == "calibrate":
        return [
            "--data",
            folder / "data.npz",
            "--noise",
            "mul",
            "--eta",
            "0.05",
            "--batch-size",
            BATCH,
            "-o",
            folder / "out.onnx",
        ]
    if command == "split":
        return ["-o", folder / "out.onnx"]
    return []


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    """A folder with a good model and good data."""
    onnx.save(small_cnn(seed=3), tmp_path / "model.onnx")
    np.savez(tmp_path / "data.npz", input=images(SAMPLES))
    return tmp_path


# --------------------------------------------------------------------------- the good path


@pytest.mark.parametrize("command", COMMANDS)
def test_good_input_works(ws: Path, capsys, command: str) -> None:
    """The baseline the bad cases are measured against: the same commands succeed."""
    rc, out, err = _cli(capsys, [command, ws / "model.onnx", *_extra_args(command, ws)])
    assert rc == 0, err
    assert err == ""
    if command in WRITERS:
        load_model(ws / "out.onnx")
    else:
        assert "4 analog layer(s)" in out


# --------------------------------------------------------------------------- bad model files


def _checker_failure() -> bytes:
    node = helper.make_node("Relu", ["undefined_tensor"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _no_graph() -> bytes:
    model = onnx.ModelProto()
    model.ir_version = 8
    return model.SerializeToString()


def _no_opset() -> bytes:
    model = small_cnn()
    del model.opset_import[:]
    return model.SerializeToString()


def _opset8() -> bytes:
    return small_cnn(opset=8).SerializeToString()


def _truncated() -> bytes:
    data = small_cnn().SerializeToString()
    return data[: len(data) // 2]


def _random_bytes() -> bytes:
    return np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()


def _bad_initializer() -> bytes:
    """An initializer whose raw data does not match its dims (the checker catches it)."""
    model = small_cnn()
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]
    return model.SerializeToString()


BAD_MODELS: Dict[str, Tuple[Callable[[], bytes], Tuple[str, ...]]] = {
    "empty file": (lambda: b"", ("no graph",)),
    "text file": (lambda: b"this is not an onnx model\n" * 10, ("onnx",)),
    "random bytes": (_random_bytes, ("onnx",)),
    "truncated": (_truncated, ("onnx",)),
    "no graph": (_no_graph, ("no graph",)),
    "fails checker": (_checker_failure, ("checker",)),
    "no default opset": (_no_opset, ("opset",)),
    "opset 8": (_opset8, ("opset 8", "version_converter")),
    "bad initializer": (_bad_initializer, ("checker",)),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_bad_model_file(ws: Path, capsys, command: str, case: str) -> None:
    make, words = BAD_MODELS[case]
    bad = ws / "bad.onnx"
    bad.write_bytes(make())
    _expect_error(capsys, ws, [command, bad, *_extra_args(command, ws)], words=words)


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_model(ws: Path, capsys, command: str) -> None:
    _expect_error(capsys, ws, [command, ws / "nope.onnx", *_extra_args(command, ws)], words=("not found", "nope.onnx"))


@pytest.mark.parametrize("command", COMMANDS)
def test_model_is_a_folder(ws: Path, capsys, command: str) -> None:
    (ws / "folder.onnx").mkdir()
    _expect_error(capsys, ws, [command, ws / "folder.onnx", *_extra_args(command, ws)], words=("not a file",))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode")
@pytest.mark.parametrize("command", COMMANDS)
def test_unreadable_model(ws: Path, capsys, command: str) -> None:
    path = ws / "model.onnx"
    path.chmod(0)
    try:
        _expect_error(capsys, ws, [command, path, *_extra_args(command, ws)], words=("cannot read",))
    finally:
        path.chmod(0o644)


def test_unreadable_model_mapped_to_model_error(ws: Path, monkeypatch) -> None:
    """Runs as root too: a PermissionError from the read becomes a ModelError."""

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(onnx, "load_model", refuse)
    with pytest.raises(ModelError, match=r"cannot read .*Permission denied"):
        load_model(ws / "model.onnx")


def _relu_only() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["out"])],
        "relu",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 1, 8, 8])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("command", WRITERS)
def test_no_analog_layer(ws: Path, capsys, command: str) -> None:
    onnx.save(_relu_only(), ws / "relu.onnx")
    _expect_error(capsys, ws, [command, ws / "relu.onnx", *_extra_args(command, ws)], words=("analog layer",))


def test_inspect_no_analog_layer_reports_zero(ws: Path, capsys) -> None:
    """inspect only describes: a model without analog layers is an answer, not an error."""
    onnx.save(_relu_only(), ws / "relu.onnx")
    rc, out, err = _cli(capsys, ["inspect", ws / "relu.onnx"])
    assert rc == 0 and err == ""
    assert "0 analog layer(s)" in out


def _training_bn(opset: int) -> onnx.ModelProto:
    """small_cnn with its first BatchNorm exported in training mode."""
    model = small_cnn(with_bn=True, opset=opset)
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    if opset >= 14:
        bn.attribute.append(helper.make_attribute("training_mode", 1))
        bn.output.extend(["bn1_running_mean", "bn1_running_var"])
    else:  # before opset 14 the optional outputs are what selects training mode
        bn.output.extend(["bn1_running_mean", "bn1_running_var", "bn1_saved_mean", "bn1_saved_var"])
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("opset", [9, 15])
def test_batchnorm_in_training_mode_is_refused(ws: Path, capsys, command: str, opset: int) -> None:
    onnx.save(_training_bn(opset), ws / "train.onnx")
    _expect_error(
        capsys, ws, [command, ws / "train.onnx", *_extra_args(command, ws)], words=("training mode", "bn1", "eval")
    )


def test_training_mode_zero_is_fine(ws: Path, capsys) -> None:
    """training_mode=0 written out explicitly is eval mode: accepted."""
    model = small_cnn(with_bn=True)
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            node.attribute.append(helper.make_attribute("training_mode", 0))
    onnx.save(model, ws / "eval.onnx")
    rc, _out, err = _cli(capsys, ["split", ws / "eval.onnx", "-o", ws / "out.onnx"])
    assert rc == 0, err


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_external_data(ws: Path, capsys, command: str) -> None:
    folder = ws / "ext"
    folder.mkdir()
    onnx.save(
        small_cnn(channels=32), folder / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0
    )
    (folder / "m.data").unlink()
    _expect_error(capsys, ws, [command, folder / "m.onnx", *_extra_args(command, ws)], words=("m.data",))


# --------------------------------------------------------------------------- bad data


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _good() -> np.ndarray:
    return images(SAMPLES)


def _with(value) -> np.ndarray:
    x = _good()
    x[3, 0, 2, 2] = value
    return x


BAD_DATA: Dict[str, Tuple[Callable[[Path], Path], Tuple[str, ...]]] = {
    "nan": (lambda p: _npz(p, input=_with(np.nan)), ("nan",)),
    "inf": (lambda p: _npz(p, input=_with(np.inf)), ("inf",)),
    "-inf": (lambda p: _npz(p, input=_with(-np.inf)), ("inf",)),
    "wrong keys": (lambda p: _npz(p, image=_good(), mask=_good()), ("keys", "input")),
    "wrong channels": (lambda p: _npz(p, input=np.zeros((SAMPLES, 3, 8, 8), np.float32)), ("shape",)),
    "wrong size": (lambda p: _npz(p, input=np.zeros((SAMPLES, 1, 9, 9), np.float32)), ("shape",)),
    "wrong rank": (lambda p: _npz(p, input=np.zeros((SAMPLES, 64), np.float32)), ("rank",)),
    "scalar": (lambda p: _npz(p, input=np.float32(1.0)), ("scalar",)),
    "int dtype": (lambda p: _npz(p, input=np.zeros((SAMPLES, 1, 8, 8), np.int32)), ("int32", "float")),
    "string dtype": (lambda p: _npz(p, input=np.full((SAMPLES, 1, 8, 8), "a")), ("float",)),
    "complex dtype": (lambda p: _npz(p, input=np.zeros((SAMPLES, 1, 8, 8), np.complex64)), ("complex",)),
    "bool dtype": (lambda p: _npz(p, input=np.zeros((SAMPLES, 1, 8, 8), bool)), ("bool",)),
    "object dtype": (lambda p: _npz(p, input=np.array([None] * SAMPLES, dtype=object)), ("objects",)),
    "empty": (lambda p: _npz(p, input=np.zeros((0, 1, 8, 8), np.float32)), ("no samples",)),
    "no arrays": (lambda p: _npz(p), ("no", "input")),
    "single sample": (lambda p: _npz(p, input=images(1)), ("1 sample",)),
    "labels mismatch": (lambda p: _npz(p, input=_good(), labels=np.zeros(SAMPLES - 1)), ("samples",)),
    "not a zip": (lambda p: (p.write_bytes(b"not a zip file"), p)[1], ("npz",)),
    "truncated zip": (lambda p: (_npz(p, input=_good()), p.write_bytes(p.read_bytes()[:3000]), p)[2], ("data.bad",)),
    "not npz": (lambda p: (p.with_suffix(".csv").write_text("1,2,3\n"), p.with_suffix(".csv"))[1], (".npz",)),
    "missing": (lambda p: p.with_name("missing.npz"), ("not found",)),
}


@pytest.mark.parametrize("command", ["calibrate", "split"])
@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data(ws: Path, capsys, command: str, case: str) -> None:
    make, words = BAD_DATA[case]
    path = make(ws / "data.bad.npz")
    argv = [command, ws / "model.onnx", "--data", path, "--batch-size", BATCH, "-o", ws / "out.onnx"]
    if command == "calibrate":
        argv += ["--noise", "mul", "--eta", "0.05"]
    _expect_error(capsys, ws, argv, words=words)


@pytest.mark.parametrize("command", ["calibrate", "split"])
def test_single_sample_batches(ws: Path, capsys, command: str) -> None:
    """A variance needs two samples: batch size 1 is refused, not turned into NaN statistics."""
    argv = [command, ws / "model.onnx", "--data", ws / "data.npz", "--batch-size", 1, "-o", ws / "out.onnx"]
    _expect_error(capsys, ws, argv, words=("1 sample", "at least 2"))


@pytest.mark.parametrize(
    "flag,value,words",
    [
        ("--batch-size", 0, ("batch size",)),
        ("--batch-size", -4, ("batch size",)),
        ("--max-batches", 0, ("max batches",)),
    ],
)
def test_bad_batching(ws: Path, capsys, flag: str, value: int, words) -> None:
    argv = ["calibrate", ws / "model.onnx", "--data", ws / "data.npz", flag, value, "-o", ws / "out.onnx"]
    _expect_error(capsys, ws, argv, words=words)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_data(ws: Path, capsys) -> None:
    path = ws / "data.npz"
    path.chmod(0)
    try:
        argv = ["calibrate", ws / "model.onnx", "--data", path, "-o", ws / "out.onnx"]
        _expect_error(capsys, ws, argv, words=("data.npz",))
    finally:
        path.chmod(0o644)


# --------------------------------------------------------------------------- bad noise parameters


BAD_NOISE = [
    (["--eta", "-0.1"], ("eta", ">= 0")),
    (["--eta", "1e9"], ("eta", "range")),
    (["--eta", "nan"], ("eta", "finite")),
    (["--eta", "inf"], ("eta", "finite")),
    (["--eta", "0.05", "--sigma-t", "-1"], ("sigma_t",)),
    (["--eta", "0.05", "--sigma-s", "-0.5"], ("sigma_s",)),
    (["--eta", "0.05", "--sigma-s", "nan"], ("sigma_s",)),
    (["--eta", "0.05", "--seed", "-1"], ("seed",)),
    (["--eta", "0.05", "--seed", str(2**64)], ("seed",)),
]


@pytest.mark.parametrize("command", ["inject", "calibrate"])
@pytest.mark.parametrize("noise_args,words", BAD_NOISE, ids=[" ".join(a) for a, _ in BAD_NOISE])
def test_bad_noise_parameters(ws: Path, capsys, command: str, noise_args, words) -> None:
    argv = [command, ws / "model.onnx", "--noise", "mul", *noise_args, "-o", ws / "out.onnx"]
    if command == "calibrate":
        argv += ["--data", ws / "data.npz", "--batch-size", BATCH]
    _expect_error(capsys, ws, argv, words=words)


BAD_DEVICE = [
    (["--noise", "pcm", "--set", "drift_scale=-0.5"], ("drift_scale", ">= 0")),
    (["--noise", "pcm", "--set", "g_min=30"], ("g_min", "g_max")),
    (["--noise", "pcm", "--set", "g_max=-1"], ("g_max", "> 0")),
    (["--noise", "pcm", "--stuck-min", "1.5"], ("stuck_min", "[0, 1]")),
    (["--noise", "pcm", "--stuck-max", "-0.1"], ("stuck_max", "[0, 1]")),
    (["--noise", "ideal", "--stuck-min", "0.6", "--stuck-max", "0.6"], ("stuck_min + stuck_max",)),
    (["--noise", "ideal", "--levels", "0"], ("levels", ">= 2")),
    (["--noise", "pcm", "--levels", "1"], ("levels", ">= 2")),
    (["--noise", "pcm", "--t-inference", "-3"], ("t_inference", ">= 0")),
    (["--noise", "pcm", "--t-inference", "nan"], ("t_inference", "finite")),
    (["--noise", "pcm", "--clip-sigma", "-2"], ("clip_sigma",)),
    (["--noise", "pcm", "--set", "t_0=0"], ("t_0", "> 0")),
    (["--noise", "pcm", "--set", 'prog_coeff=[1, "a"]'], ("prog_coeff",)),
    (["--noise", "pcm", "--set", "colour=3"], ("unknown", "colour")),
    (["--noise", "pcm", "--set", "novalue"], ("KEY=VALUE",)),
    (["--noise", "rram", "--t-inference", "3600"], ("t_inference", "86400")),
    (["--noise", "rram-cmo", "--set", "acceptance_range=5"], ("acceptance_range",)),
    (["--noise", "mul", "--eta", "0.05", "--t-inference", "10"], ("t_inference", "device")),
    (["--noise", "pcm", "--eta", "-1"], ("eta", ">= 0")),
]


@pytest.mark.parametrize("command", ["inject", "calibrate"])
@pytest.mark.parametrize("device_args,words", BAD_DEVICE, ids=[" ".join(a) for a, _ in BAD_DEVICE])
def test_bad_device_parameters(ws: Path, capsys, command: str, device_args, words) -> None:
    argv = [command, ws / "model.onnx", *device_args, "-o", ws / "out.onnx"]
    if command == "calibrate":
        argv += ["--data", ws / "data.npz", "--batch-size", BATCH]
    _expect_error(capsys, ws, argv, words=words)


@pytest.mark.parametrize(
    "content,words",
    [
        ('{"noise": "pcm", "g_min": 40}', ("g_min",)),
        ('{"noise": "pcm", "stuck_max": 2}', ("stuck_max", "[0, 1]")),
        ('{"noise": "pcm", "drift_scale": -1}', ("drift_scale",)),
        ('{"noise": "pcm", "levels": 0}', ("levels",)),
        ('{"noise": "pcm", "t_inference": 3600', ("not valid json",)),
        ("[1, 2]", ("table",)),
        ('{"noise": "flash"}', ("unknown noise model",)),
    ],
)
def test_bad_device_file(ws: Path, capsys, content: str, words) -> None:
    (ws / "device.json").write_text(content)
    _expect_error(
        capsys, ws, ["inject", ws / "model.onnx", "--device", ws / "device.json", "-o", ws / "out.onnx"], words=words
    )


def test_missing_device_file(ws: Path, capsys) -> None:
    _expect_error(
        capsys,
        ws,
        ["inject", ws / "model.onnx", "--noise", "pcm", "--device", ws / "nope.json", "-o", ws / "out.onnx"],
        words=("cannot read device file",),
    )


@pytest.mark.parametrize(
    "argv_tail",
    [
        ["--noise", "mul"],  # no --eta
        ["--noise", "gauss", "--eta", "0.1"],
        ["--noise", "mul", "--eta", "abc"],
        ["--noise", "mul", "--eta", "0.1", "--seed", "1.5"],
        ["--eta", "0.1"],  # no --noise (inject requires it)
    ],
)
def test_noise_usage_errors_exit_2(ws: Path, capsys, argv_tail) -> None:
    _expect_error(capsys, ws, ["inject", ws / "model.onnx", *argv_tail, "-o", ws / "out.onnx"], code=2)


def test_calibrate_eta_without_noise_exit_2(ws: Path, capsys) -> None:
    argv = ["calibrate", ws / "model.onnx", "--data", ws / "data.npz", "--eta", "0.1", "-o", ws / "out.onnx"]
    _expect_error(capsys, ws, argv, code=2)


def test_inject_twice_is_refused(ws: Path, capsys) -> None:
    rc, _, err = _cli(capsys, ["inject", ws / "model.onnx", "--noise", "mul", "--eta", "0.05", "-o", ws / "noisy.onnx"])
    assert rc == 0, err
    _expect_error(
        capsys,
        ws,
        ["inject", ws / "noisy.onnx", "--noise", "add", "--eta", "0.001", "-o", ws / "out.onnx"],
        words=("already",),
    )


# --------------------------------------------------------------------------- bad output paths and options


@pytest.mark.parametrize("command", WRITERS)
def test_output_folder_missing(ws: Path, capsys, command: str) -> None:
    argv = [command, ws / "model.onnx", *_extra_args(command, ws)[:-2], "-o", ws / "no" / "such" / "out.onnx"]
    _expect_error(capsys, ws, argv, words=("does not exist",))


@pytest.mark.parametrize("command", WRITERS)
def test_output_is_input(ws: Path, capsys, command: str) -> None:
    argv = [command, ws / "model.onnx", *_extra_args(command, ws)[:-2], "-o", ws / "model.onnx"]
    _expect_error(capsys, ws, argv, words=("overwrite", "input"))


@pytest.mark.parametrize("command", WRITERS)
def test_output_is_input_by_another_name(ws: Path, capsys, command: str) -> None:
    (ws / "alias.onnx").symlink_to(ws / "model.onnx")
    argv = [command, ws / "model.onnx", *_extra_args(command, ws)[:-2], "-o", ws / "alias.onnx"]
    _expect_error(capsys, ws, argv, words=("overwrite",))


@pytest.mark.parametrize("command", WRITERS)
def test_output_is_a_folder(ws: Path, capsys, command: str) -> None:
    (ws / "outdir").mkdir()
    argv = [command, ws / "model.onnx", *_extra_args(command, ws)[:-2], "-o", ws / "outdir"]
    _expect_error(capsys, ws, argv, words=("folder",))


@pytest.mark.parametrize("command", WRITERS)
@pytest.mark.parametrize("target", ["out.onnx --external-data", "weights.bin"])
def test_output_would_overwrite_input_external_data(ws: Path, capsys, command: str, target: str) -> None:
    """An output (or its ``.data`` file) that is where the input keeps its weights is refused."""
    folder = ws / "ext"
    folder.mkdir()
    location = "out.onnx.data" if target.startswith("out.onnx") else "weights.bin"
    onnx.save(
        small_cnn(seed=3, channels=32),
        folder / "m.onnx",
        save_as_external_data=True,
        location=location,
        size_threshold=0,
    )
    name, *flags = target.split()
    argv = [command, folder / "m.onnx", *_extra_args(command, ws)[:-2], "-o", folder / name, *flags]
    _expect_error(capsys, ws, argv, words=("overwrite", "weights"))
    load_model(folder / "m.onnx")


def test_report_folder_missing(ws: Path, capsys) -> None:
    """The report is checked before the model is written, so nothing is left half done."""
    argv = ["calibrate", ws / "model.onnx", *_extra_args("calibrate", ws), "--report", ws / "no" / "r.json"]
    _expect_error(capsys, ws, argv, words=("does not exist",))


@pytest.mark.parametrize("command", ["split", "inject", "calibrate", "inspect"])
def test_bad_regex(ws: Path, capsys, command: str) -> None:
    _expect_error(
        capsys,
        ws,
        [command, ws / "model.onnx", *_extra_args(command, ws), "--include", "conv[1"],
        words=("include", "regular expression"),
    )


def test_include_matches_nothing(ws: Path, capsys) -> None:
    _expect_error(
        capsys,
        ws,
        ["split", ws / "model.onnx", "--include", "^nothing_like_this$", "-o", ws / "out.onnx"],
        words=("nothing",),
    )


def test_bad_momentum(ws: Path, capsys) -> None:
    argv = ["calibrate", ws / "model.onnx", *_extra_args("calibrate", ws), "--estimator", "ema", "--momentum", "1.5"]
    _expect_error(capsys, ws, argv, words=("momentum",))


def test_unknown_command_and_flag_exit_2(ws: Path, capsys) -> None:
    _expect_error(capsys, ws, ["frobnicate", ws / "model.onnx"], code=2)
    _expect_error(capsys, ws, ["split", ws / "model.onnx", "--frobnicate"], code=2)
    _expect_error(capsys, ws, ["calibrate", ws / "model.onnx"], code=2)  # --data is required


@pytest.mark.parametrize("case", ["missing", "wrong shape", "no labels"])
def test_bad_test_data_leaves_no_output(ws: Path, capsys, case: str) -> None:
    """``calibrate --test`` runs after the calibration: its failure must not leave the model written."""
    test = ws / "test.npz"
    if case == "wrong shape":
        np.savez(test, input=np.zeros((8, 3, 8, 8), np.float32), labels=np.zeros(8, np.int64))
    elif case == "no labels":
        np.savez(test, input=images(8))
    argv = ["calibrate", ws / "model.onnx", *_extra_args("calibrate", ws), "--test", test]
    _expect_error(capsys, ws, argv)


def _other_argv(command: str, model: Path, data: Path) -> List:
    if command == "evaluate":
        return ["evaluate", model, "--data", data]
    if command == "diagnose":
        return ["diagnose", model, "--data", data, "--noise", "mul", "--eta", "0.05"]
    return ["sweep", model, "--calib", data, "--test", data, "--noise", "mul", "--eta", "0.05", "--seeds", "1"]


OTHER_COMMANDS = ("evaluate", "diagnose", "sweep")


@pytest.mark.parametrize("command", OTHER_COMMANDS)
@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_other_commands_refuse_bad_models(ws: Path, capsys, command: str, case: str) -> None:
    np.savez(ws / "labelled.npz", input=images(SAMPLES), labels=np.arange(SAMPLES) % 10)
    make, words = BAD_MODELS[case]
    (ws / "bad.onnx").write_bytes(make())
    _expect_error(capsys, ws, _other_argv(command, ws / "bad.onnx", ws / "labelled.npz"), words=words)


@pytest.mark.parametrize("command", OTHER_COMMANDS)
@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_other_commands_refuse_bad_data(ws: Path, capsys, command: str, case: str) -> None:
    make, _words = BAD_DATA[case]
    path = make(ws / "data.bad.npz")
    _expect_error(capsys, ws, _other_argv(command, ws / "model.onnx", path))


# ------------------------------------------------------------------- no input ever overwritten (issue 20 item 1)


def _calibrate_args(ws: Path) -> List[object]:
    return ["calibrate", ws / "model.onnx", "--data", ws / "data.npz", "--noise", "mul", "--eta", "0.3"]


@pytest.fixture
def labelled(ws: Path) -> Path:
    """Labelled test data beside the model (for --test)."""
    np.savez(ws / "test.npz", input=images(SAMPLES), labels=np.arange(SAMPLES) % 4)
    return ws / "test.npz"


@pytest.mark.parametrize(
    "extra, words",
    [
        (["-o", "o.onnx", "--report", "model.onnx"], ("overwrite", "input model", "--report")),
        (["-o", "data.npz"], ("overwrite", "--data", "-o/--output")),
        (["-o", "o.onnx", "--report", "test.npz"], ("overwrite", "--test", "--report")),
        (["-o", "o.onnx", "--report", "r.txt"], ("report must end in", ".json")),
        (["-o", "same.json", "--report", "same.json"], ("same file",)),
    ],
)
def test_no_output_of_calibrate_may_name_an_input(ws: Path, labelled: Path, capsys, extra, words) -> None:
    """``--report`` and ``-o`` are compared with every input (model, data, test), not only -o with MODEL."""
    argv = [
        *_calibrate_args(ws),
        "--test",
        labelled,
        "--batch-size",
        BATCH,
        *[ws / e if "." in e else e for e in extra],
    ]
    _expect_error(capsys, ws, argv, words=words)


def test_calibrate_refuses_to_overwrite_the_reference_model(ws: Path, capsys) -> None:
    assert main(["inject", str(ws / "model.onnx"), "--noise", "mul", "--eta", "0.3", "-o", str(ws / "chip.onnx")]) == 0
    capsys.readouterr()
    argv = ["calibrate", ws / "chip.onnx", "--reference", ws / "model.onnx", "--data", ws / "data.npz"]
    _expect_error(capsys, ws, [*argv, "--batch-size", BATCH, "-o", ws / "model.onnx"], words=("reference", "overwrite"))


def test_an_output_reached_through_a_link_or_hard_link_is_the_input(ws: Path, capsys) -> None:
    os.link(ws / "data.npz", ws / "hard.npz")
    (ws / "soft.npz").symlink_to(ws / "data.npz")
    for name in ("hard.npz", "soft.npz"):
        _expect_error(capsys, ws, [*_calibrate_args(ws), "--batch-size", BATCH, "-o", ws / name], words=("--data",))


def test_sweep_and_check_outputs_may_not_name_inputs_or_each_other(ws: Path, labelled: Path, capsys) -> None:
    grid = ["--noise", "mul", "--eta", "0.1", "--seeds", "1", "--batch-size", BATCH]
    sweep = ["sweep", ws / "model.onnx", "--calib", ws / "data.npz", "--test", labelled, *grid]
    _expect_error(capsys, ws, [*sweep, "--report", ws / "r.json", "--plot", ws / "r.json"], words=("same file",))
    _expect_error(capsys, ws, [*sweep, "--results", ws / "data.npz"], words=("--calib", "--results"))
    check = ["check", ws / "model.onnx", "--data", ws / "data.npz", "--test", labelled, *grid, "--min", "top1=0.1"]
    # a gate that cannot run exits 2, never 1 (the code of a missed threshold)
    before = _fingerprint(ws)
    rc, _out, err = _cli(capsys, [*check, "--junit", labelled])
    assert rc == 2 and "overwrite the test data" in err and err.count("\n") == 1
    assert _fingerprint(ws) == before


def test_library_calibrate_refuses_an_output_that_is_the_reference(ws: Path) -> None:
    from nabn_onnx import calibrate, inject, make_noise

    inject(ws / "model.onnx", make_noise("mul", 0.3), output=ws / "chip.onnx")
    before = (ws / "model.onnx").read_bytes()
    with pytest.raises(ModelError, match="overwrite the reference model"):
        calibrate(
            ws / "chip.onnx", ws / "data.npz", reference=ws / "model.onnx", output=ws / "model.onnx", batch_size=8
        )
    with pytest.raises(ModelError, match="overwrite the calibration data"):
        calibrate(
            ws / "model.onnx", ws / "data.npz", noise=make_noise("mul", 0.3), output=ws / "data.npz", batch_size=8
        )
    assert (ws / "model.onnx").read_bytes() == before
