"""Reliability (issue 20) in the model layer: output folders that cannot be written (item 4),
external data through symbolic links (item 6), external-data claims that do not fit the
tensor or the file (item 9), and text too large to copy (item 13).

Each case builds its own small inputs in a temporary folder: gigabyte files are sparse, and
the text limits are lowered for the test rather than filled. Where a regression would read
gigabytes, the CLI runs in a child process with an address-space bound (``_bounded_cli``).
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, external_data_helper, helper
from test_reliability import _bounded_cli, _one_line, _run

import nabn_onnx.model.load as load_module
from nabn_onnx.model import save_model, serialize_model, weightless_copy

from builders import images, small_cnn

SAMPLES = 32
BATCH = 8


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    onnx.save(small_cnn(seed=3, with_bn=True), tmp_path / "model.onnx")
    np.savez(tmp_path / "data.npz", input=images(SAMPLES))
    np.savez(tmp_path / "test.npz", input=images(SAMPLES, seed=2), labels=np.arange(SAMPLES) % 4)
    return tmp_path


@pytest.fixture
def sessions(monkeypatch) -> List[str]:
    """Every onnxruntime session a command builds (none: it did no work)."""
    built: List[str] = []
    real = onnxruntime.InferenceSession

    def spy(path, *args, **kwargs):
        built.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", spy)
    return built


def _calibrate(ws: Path, model: Optional[Path] = None) -> List[object]:
    argv: List[object] = ["calibrate", model or ws / "model.onnx", "--data", ws / "data.npz", "--noise", "mul"]
    return [*argv, "--eta", "0.1", "--batch-size", BATCH, "-q"]


def _sweep(ws: Path) -> List[object]:
    argv: List[object] = ["sweep", ws / "model.onnx", "--calib", ws / "data.npz", "--test", ws / "test.npz"]
    return [*argv, "--noise", "mul", "--eta", "0.05", "--seeds", "1", "--batch-size", BATCH, "-q"]


# --------------------------------------------------------------------------- 4: folders that refuse new files


def _read_only(monkeypatch, folder: Path, code: int) -> None:
    """Make creating a file in ``folder`` fail as a read-only mount (EROFS) or a denied folder (EACCES) would.

    Root ignores permission bits, so the folder itself stays writable: the failure is injected
    where a file is first created in it.
    """
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        where = kwargs.get("dir", args[2] if len(args) > 2 else None)
        if where is not None and Path(where).resolve() == folder.resolve():
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
@pytest.mark.parametrize("option", ["-o", "--report"])
def test_an_output_folder_that_refuses_files_is_refused_before_any_work(
    ws: Path, capsys, monkeypatch, sessions, code: int, option: str
):
    locked = ws / "locked"
    locked.mkdir()
    _read_only(monkeypatch, locked, code)
    outputs = {"-o": ws / "out.onnx", "--report": ws / "r.json"}
    outputs[option] = locked / outputs[option].name
    argv = [*_calibrate(ws), "-o", outputs["-o"], "--report", outputs["--report"]]
    code_, _out, err = _run(capsys, argv)
    line = _one_line(err, "calibrate")
    assert code_ == 1 and str(locked) in line and os.strerror(code) in line
    assert sessions == [], "the calibration ran before the output folder was checked"
    assert not any(p.exists() for p in outputs.values())
    assert sorted(p.name for p in locked.iterdir()) == [], "the probe left a file behind"


@pytest.mark.parametrize("command", ["split", "sweep --results", "check --junit"])
def test_every_output_option_probes_its_folder(ws: Path, capsys, monkeypatch, sessions, command: str):
    locked = ws / "locked"
    locked.mkdir()
    _read_only(monkeypatch, locked, errno.EROFS)
    if command == "split":
        argv, name = ["split", ws / "model.onnx", "-o", locked / "s.onnx"], "split"
    elif command == "sweep --results":
        argv, name = [*_sweep(ws), "--results", locked / "r.jsonl"], "sweep"
    else:
        argv = ["check", ws / "model.onnx", "--data", ws / "data.npz", "--test", ws / "test.npz", "--noise", "mul"]
        argv += ["--eta", "0.05", "--seeds", "1", "--batch-size", BATCH, "--min", "top1=0", "--junit", locked / "j.xml"]
        name = "check"
    code, _out, err = _run(capsys, argv)
    line = _one_line(err, name)
    assert code == (2 if name == "check" else 1) and "Read-only file system" in line and str(locked) in line
    assert sessions == [] and list(locked.iterdir()) == []


def _unwritable_system_folder() -> Path:
    """``/sys``: no one, root included, may create a file there."""
    folder = Path("/sys")
    if not folder.is_dir():
        pytest.skip("no /sys on this system")
    try:
        fd, probe = tempfile.mkstemp(dir=folder)
    except OSError:
        return folder
    os.close(fd)
    os.unlink(probe)
    pytest.skip("/sys accepts new files here")


def test_a_really_unwritable_folder_is_refused_before_any_work(ws: Path, capsys, sessions):
    folder = _unwritable_system_folder()
    code, _out, err = _run(capsys, [*_calibrate(ws), "-o", ws / "out.onnx", "--report", folder / "nabn-r.json"])
    line = _one_line(err, "calibrate")
    assert code == 1 and f"cannot write to the output folder {folder}" in line
    assert sessions == [] and not (ws / "out.onnx").exists()


def test_a_really_unwritable_folder_through_the_cli_process(ws: Path):
    folder = _unwritable_system_folder()
    done = _bounded_cli(["split", ws / "model.onnx", "-o", folder / "nabn-s.onnx"])
    assert done.returncode == 1 and f"output folder {folder}" in _one_line(done.stderr, "split")


# --------------------------------------------------------------------------- 6: external data through links


def _save_external(model: onnx.ModelProto, folder: Path, location: str = "weights.bin") -> Path:
    """``model`` (not changed: onnx.save converts what it is given) saved with its weights in ``location``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save(copy, path, save_as_external_data=True, location=location, size_threshold=0)
    return path


def _set_entries(path: Path, name: str, entries: Dict[str, str], drop: tuple = ()) -> None:
    """Set external-data entries of the tensor ``name`` in the model file ``path`` (or of every external one)."""
    model = onnx.load(path, load_external_data=False)
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor) or (name and tensor.name != name):
            continue
        kept = [(e.key, e.value) for e in tensor.external_data if e.key not in entries and e.key not in drop]
        del tensor.external_data[:]
        for key, value in kept + list(entries.items()):
            tensor.external_data.add(key=key, value=value)
    path.write_bytes(model.SerializeToString())


def _initializers(path: Path) -> Dict[str, bytes]:
    model = onnx.load(path)
    return {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in model.graph.initializer}


@pytest.mark.parametrize("link", ["file", "file in a subfolder", "subfolder"])
def test_external_data_through_a_link_inside_the_folder_is_followed(tmp_path: Path, capsys, link: str):
    model = small_cnn(seed=3, with_bn=True)
    plain = _save_external(model, tmp_path / "plain")
    path = _save_external(model, tmp_path / "linked")
    folder = path.parent
    (folder / "store").mkdir()
    if link == "file":
        os.replace(folder / "weights.bin", folder / "weights-v1.bin")
        (folder / "weights.bin").symlink_to("weights-v1.bin")
    elif link == "file in a subfolder":
        os.replace(folder / "weights.bin", folder / "store" / "weights-v1.bin")
        (folder / "weights.bin").symlink_to(Path("store") / "weights-v1.bin")
    else:
        os.replace(folder / "weights.bin", folder / "store" / "weights.bin")
        (folder / "current").symlink_to("store")
        _set_entries(path, "", {"location": "current/weights.bin"})
    done = _bounded_cli(["inspect", path])
    assert done.returncode == 0, done.stderr
    assert "analog layer" in done.stdout and done.stderr == ""
    for out, source in ((tmp_path / "a.onnx", path), (tmp_path / "b.onnx", plain)):
        code, _out, err = _run(capsys, ["split", source, "-o", out, "-q"])
        assert code == 0, err
    assert _initializers(tmp_path / "a.onnx") == _initializers(tmp_path / "b.onnx")
    np.savez(tmp_path / "data.npz", input=images(SAMPLES))
    code, _out, err = _run(capsys, [*_calibrate(tmp_path, path), "-o", tmp_path / "c.onnx"])
    assert code == 0 and (tmp_path / "c.onnx").is_file(), err


def test_external_data_through_a_link_leaving_the_folder_is_one_line(tmp_path: Path, capsys):
    path = _save_external(small_cnn(seed=3), tmp_path / "model")
    os.replace(path.parent / "weights.bin", tmp_path / "elsewhere.bin")
    (path.parent / "weights.bin").symlink_to(tmp_path / "elsewhere.bin")
    for command in ("inspect", "split"):
        code, _out, err = _run(capsys, [command, path])
        line = _one_line(err, command)
        assert code == 1 and "'weights.bin' is a symbolic link" in line and "outside the model's folder" in line


# --------------------------------------------------------------------------- 9: claims checked before reading


def _claim(folder: Path, entries: Dict[str, str], size: Optional[int], drop: tuple = ()) -> Path:
    """The small CNN whose ``fc_b`` (dims [10], 40 bytes) keeps its data in ``w.bin`` with ``entries``.

    ``w.bin`` starts with the real 40 bytes and is ``size`` bytes long (sparse beyond them); None: no file.
    """
    path = _save_external(small_cnn(seed=3), folder)
    raw = (folder / "weights.bin").read_bytes()
    model = onnx.load(path, load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.name == "fc_b")
    info = external_data_helper.ExternalDataInfo(tensor)
    if size is not None:
        with open(folder / "w.bin", "wb") as fh:
            fh.write(raw[info.offset : info.offset + info.length])
            fh.truncate(size)
    wanted = {"location": "w.bin", "offset": "0", "length": "40", **entries}
    _set_entries(path, "fc_b", {k: v for k, v in wanted.items() if k not in drop}, drop)
    return path


@pytest.mark.parametrize(
    "entries, size, drop",
    [
        ({"length": str(3 << 30)}, 3 << 30, ()),
        ({}, 3 << 30, ("length",)),
        ({"length": str(6 << 30)}, 6 << 30, ()),
    ],
    ids=["3 GiB length", "3 GiB file, no length", "6 GiB length"],
)
def test_a_bias_claiming_gibibytes_is_refused_before_reading(tmp_path: Path, entries, size: int, drop):
    path = _claim(tmp_path / "m", entries, size, drop)
    assert (tmp_path / "m" / "w.bin").stat().st_blocks * 512 < 1 << 20, "the test file should be sparse"
    for command in ("inspect", "split"):
        done = _bounded_cli([command, path])
        line = _one_line(done.stderr, command)
        assert done.returncode == 1 and "'fc_b'" in line and "nothing was read" in line


@pytest.mark.parametrize(
    "entries, size, words",
    [
        ({"length": "100"}, 40, "claims 100 bytes of external data but its dims [10] need 40"),
        ({"offset": "100"}, 40, "from byte 100 of 'w.bin', which holds 40 bytes"),
        ({"offset": "8"}, 20, "from byte 8 of 'w.bin', which holds 20 bytes"),
        ({"foo": "bar", "length": "400"}, 40, "claims 400 bytes"),
    ],
    ids=["length beyond the file", "offset beyond the file", "range past the end", "unknown key, no warning"],
)
def test_external_claims_that_do_not_fit_the_file_are_one_line(tmp_path: Path, capsys, entries, size, words):
    path = _claim(tmp_path / "m", entries, size)
    code, _out, err = _run(capsys, ["inspect", path])
    line = _one_line(err, "inspect")
    assert code == 1 and words in line and "nothing was read" in line


def test_external_data_in_a_fifo_is_named_as_such(tmp_path: Path, capsys):
    path = _claim(tmp_path / "m", {}, None)
    os.mkfifo(tmp_path / "m" / "w.bin")
    done = _bounded_cli(["inspect", path])
    assert done.returncode == 1 and "special file" in _one_line(done.stderr, "inspect")


def test_string_tensors_in_external_data_are_refused(tmp_path: Path, capsys):
    model = small_cnn(seed=3)
    strings = helper.make_tensor("labels", TensorProto.STRING, [2], [b"ab", b"cd"])
    strings.ClearField("string_data")
    strings.data_location = TensorProto.EXTERNAL
    strings.external_data.add(key="location", value="s.bin")
    strings.external_data.add(key="length", value="4")
    model.graph.initializer.append(strings)
    (tmp_path / "s.bin").write_bytes(b"abcd")
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    code, _out, err = _run(capsys, ["inspect", tmp_path / "m.onnx"])
    assert code == 1 and "'labels' has string data stored as external data" in _one_line(err, "inspect")


@pytest.mark.parametrize(
    "entries, size, words",
    [
        ({"offset": "-8"}, 40, "non-negative"),
        ({"length": "-4"}, 40, "non-negative"),
        ({"length": "ten"}, 40, "unreadable external-data fields"),
        ({"length": "1e3"}, 40, "unreadable external-data fields"),
        ({}, None, "does not exist next to the model"),
    ],
    ids=["negative offset", "negative length", "non-numeric length", "float length", "missing file"],
)
def test_external_fields_that_make_no_sense_stay_one_line(tmp_path: Path, capsys, entries, size, words):
    """These were one line before the claims were checked (onnx's own checks); they must stay so."""
    path = _claim(tmp_path / "m", entries, size)
    code, _out, err = _run(capsys, ["inspect", path])
    assert code == 1 and words in _one_line(err, "inspect")


# --------------------------------------------------------------------------- 13: text too large to copy

#: The limits while testing: values of 2 MiB stand for values above 64 MiB.
TEXT_LIMIT, TOTAL_LIMIT = 1 << 20, 4 << 20


def _with_text(kind: str, size: int) -> onnx.ModelProto:
    model = small_cnn(seed=3, with_bn=True)
    text = "x" * size
    if kind == "metadata value":
        model.metadata_props.add(key="notes", value=text)
    elif kind == "model doc string":
        model.doc_string = text
    elif kind == "graph doc string":
        model.graph.doc_string = text
    elif kind == "node doc string":
        model.graph.node[0].doc_string = text
    elif kind == "string initializer":
        model.graph.initializer.append(helper.make_tensor("labels", TensorProto.STRING, [1], [text.encode()]))
    elif kind == "many strings":
        count = size // 1000
        model.graph.initializer.append(helper.make_tensor("labels", TensorProto.STRING, [count], [b"y" * 1000] * count))
    elif kind == "node attribute":
        model.graph.node[1].attribute.append(helper.make_attribute("note", text.encode()))
    elif kind == "several values":
        for i in range(5):
            model.metadata_props.add(key=f"part{i}", value=text[: size // 2])
    return model


@pytest.fixture
def low_limits(monkeypatch):
    monkeypatch.setattr(load_module, "MAX_TEXT_BYTES", TEXT_LIMIT, raising=False)
    monkeypatch.setattr(load_module, "MAX_TOTAL_TEXT_BYTES", TOTAL_LIMIT, raising=False)


KINDS = [
    "metadata value",
    "model doc string",
    "graph doc string",
    "node doc string",
    "string initializer",
    "many strings",
    "node attribute",
    "several values",
]


@pytest.mark.parametrize("kind", KINDS)
def test_text_above_the_limit_is_refused_in_one_line(tmp_path: Path, capsys, low_limits, kind: str):
    path = tmp_path / "m.onnx"
    path.write_bytes(_with_text(kind, 2 * TEXT_LIMIT).SerializeToString())
    code, _out, err = _run(capsys, ["inspect", path])
    line = _one_line(err, "inspect")
    assert code == 1 and "MiB of text" in line and "refuses" in line
    if kind == "metadata value":
        assert "'notes'" in line


@pytest.mark.parametrize("command", ["split", "calibrate"])
def test_text_above_the_limit_is_refused_before_any_work(ws: Path, capsys, low_limits, sessions, command: str):
    path = ws / "m.onnx"
    path.write_bytes(_with_text("metadata value", 2 * TEXT_LIMIT).SerializeToString())
    argv = ["split", path, "-q"] if command == "split" else _calibrate(ws, path)
    code, _out, err = _run(capsys, [*argv, "-o", ws / "out.onnx"])
    assert code == 1 and "MiB of text" in _one_line(err, command)
    assert sessions == [] and not (ws / "out.onnx").exists()


@pytest.mark.parametrize("kind", ["metadata value", "graph doc string", "node doc string"])
def test_text_below_the_limit_still_works(tmp_path: Path, capsys, low_limits, kind: str):
    path = tmp_path / "m.onnx"
    path.write_bytes(_with_text(kind, TEXT_LIMIT // 2).SerializeToString())
    code, _out, err = _run(capsys, ["split", path, "-o", tmp_path / "out.onnx", "-q"])
    assert code == 0, err
    out = onnx.load(tmp_path / "out.onnx")
    kept = {
        "metadata value": lambda m: {p.key: p.value for p in m.metadata_props}["notes"],
        "graph doc string": lambda m: m.graph.doc_string,
        "node doc string": lambda m: m.graph.node[0].doc_string,
    }[kind]
    assert kept(out) == "x" * (TEXT_LIMIT // 2)


def test_the_checker_copy_holds_no_text():
    """The copy onnx's checker and shape inference get (and serialize again) leaves text out, keys kept."""
    model = _with_text("metadata value", 1000)
    model.doc_string = "m" * 1000
    model.graph.doc_string = "g" * 1000
    model.graph.node[0].doc_string = "n" * 1000
    model.graph.initializer.append(helper.make_tensor("labels", TensorProto.STRING, [1], [b"z" * 100_000]))
    light = weightless_copy(model)
    assert light.doc_string == "" and light.graph.doc_string == ""
    assert all(node.doc_string == "" for node in light.graph.node)
    assert [(p.key, p.value) for p in light.metadata_props] == [("notes", "")]
    assert "labels" not in {t.name for t in light.graph.initializer}
    assert "labels" in {i.name for i in light.graph.input}
    onnx.checker.check_model(light)


def test_the_streamed_writer_keeps_protobufs_bytes_with_text():
    """Text is written field by field; the bytes are still exactly protobuf's."""
    import io

    model = _with_text("metadata value", 5000)
    model.doc_string = "é" * 300
    model.graph.doc_string = "g" * 70_000
    model.graph.node[0].doc_string = "n"
    model.graph.input[0].doc_string = "the input"
    model.model_version = 0
    buffer = io.BytesIO()
    serialize_model(model, buffer)
    assert buffer.getvalue() == model.SerializeToString()


def test_a_copy_for_onnxruntime_can_leave_text_out(tmp_path: Path):
    model = _with_text("metadata value", 5000)
    model.doc_string = "m" * 100
    model.graph.doc_string = "g" * 100
    model.graph.node[0].doc_string = "n" * 100
    save_model(model, tmp_path / "light.onnx", external_data=False, text=False)
    light = onnx.load(tmp_path / "light.onnx")
    assert light.doc_string == light.graph.doc_string == light.graph.node[0].doc_string == ""
    assert [(p.key, p.value) for p in light.metadata_props] == [("notes", "")]
    light.doc_string, light.graph.doc_string, light.graph.node[0].doc_string = "m" * 100, "g" * 100, "n" * 100
    light.metadata_props[0].value = "x" * 5000
    assert light == model
