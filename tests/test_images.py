"""Image folders: labels from sorted class folders, resize and crop, normalization, layouts, errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from nabn_onnx import DataError, NabnError, evaluate
from nabn_onnx.cli import main
from nabn_onnx.data import ImageFolder, InputSpec, input_specs, iter_batches

from builders import images, small_cnn

Image = pytest.importorskip("PIL.Image")

GRAY = [InputSpec("input", np.dtype(np.float32), (None, 1, 4, 4))]
RGB_NHWC = [InputSpec("x", np.dtype(np.float32), (None, 4, 4, 3))]
PIXEL = 1 / 255 + 1e-6


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


@pytest.fixture()
def folder(tmp_path):
    """Classes 'cat' (2 images) and 'ant' (1 image), written out of order; 'ant' sorts first."""
    root = tmp_path / "val"
    _write(root / "cat" / "b.png", np.full((4, 4), 200))
    _write(root / "cat" / "a.png", np.full((4, 4), 100))
    _write(root / "ant" / "z.png", np.full((4, 4), 50))
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def test_labels_from_sorted_class_folders(folder):
    batches = list(iter_batches(ImageFolder(folder), GRAY, batch_size=2))
    assert [b.size for b in batches] == [2, 1]
    labels = np.concatenate([b.labels for b in batches])
    assert labels.tolist() == [0, 1, 1] and labels.dtype == np.int64
    pixels = np.concatenate([b.feeds["input"][:, 0, 0, 0] for b in batches])
    assert pixels == pytest.approx([50 / 255, 100 / 255, 200 / 255], abs=PIXEL)
    assert batches[0].feeds["input"].shape == (2, 1, 4, 4) and batches[0].feeds["input"].dtype == np.float32


def test_resize_shorter_side_then_center_crop(tmp_path):
    # 8 wide x 4 high: left half 0, right half 255; resize to shorter side 2 -> 4x2, crop 2x2 from the middle.
    image = np.zeros((4, 8), np.uint8)
    image[:, 4:] = 255
    _write(tmp_path / "c0" / "x.png", image)
    spec = [InputSpec("input", np.dtype(np.float32), (None, 1, 2, 2))]
    (batch,) = iter_batches(ImageFolder(tmp_path, resize=2), spec)
    x = batch.feeds["input"][0, 0]
    assert x.shape == (2, 2)
    assert x[:, 0].max() < 0.5 < x[:, 1].min()  # the crop straddles the edge: dark left, bright right


def test_rgb_nhwc_with_mean_and_std(tmp_path):
    _write(tmp_path / "only" / "rgb.png", np.tile(np.array([255, 0, 51], np.uint8), (4, 4, 1)))
    source = ImageFolder(tmp_path, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.1))
    (batch,) = iter_batches(source, RGB_NHWC)
    x = batch.feeds["x"]
    assert x.shape == (1, 4, 4, 3)
    assert x[0, 0, 0] == pytest.approx([(1 - 0.5) / 0.5, (0 - 0.5) / 0.25, (0.2 - 0.5) / 0.1], abs=1e-5)


def test_unlabelled_folder_and_errors(tmp_path):
    _write(tmp_path / "flat" / "a.png", np.zeros((4, 4)))
    (batch,) = iter_batches(tmp_path / "flat", GRAY)  # a plain path is routed here too
    assert batch.labels is None
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        list(iter_batches(ImageFolder(tmp_path / "empty"), GRAY))
    with pytest.raises(DataError, match="3 values"):
        list(iter_batches(ImageFolder(tmp_path / "flat", mean=(0.1, 0.2, 0.3)), GRAY))
    with pytest.raises(DataError, match="does not match"):
        list(iter_batches(ImageFolder(tmp_path / "flat", crop=3), GRAY))
    (tmp_path / "bad" / "c").mkdir(parents=True)
    (tmp_path / "bad" / "c" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image"):
        list(iter_batches(ImageFolder(tmp_path / "bad"), GRAY))
    with pytest.raises(DataError, match="NCHW or NHWC"):
        ImageFolder(tmp_path, layout="CHW")


def test_missing_pillow_names_the_extra(tmp_path, monkeypatch):
    _write(tmp_path / "c" / "a.png", np.zeros((4, 4)))
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(NabnError, match=r"nabn-onnx\[images\]"):
        list(iter_batches(ImageFolder(tmp_path), GRAY))


def test_evaluate_on_an_image_folder_from_python_and_cli(tmp_path, capsys):
    import onnx

    model = small_cnn(seed=0, size=8)
    rng = np.random.default_rng(0)
    for c in range(2):
        for i in range(3):
            _write(tmp_path / "data" / f"class{c}" / f"{i}.png", rng.integers(0, 256, (10, 12)))
    source = ImageFolder(tmp_path / "data", resize=9, crop=8)
    batches = list(iter_batches(source, input_specs(model), batch_size=4))
    assert sum(b.size for b in batches) == 6
    labels = np.concatenate([b.labels for b in batches])
    value = evaluate(model, source, "top5")
    assert 0.0 <= value <= 1.0
    onnx.save(model, tmp_path / "m.onnx")
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "m.onnx"),
                "--data",
                str(tmp_path / "data"),
                "--resize",
                "9",
                "--crop",
                "8",
                "--metric",
                "top5",
                "--json",
            ]
        )
        == 0
    )
    assert f'"value": {value}' in capsys.readouterr().out
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_mean_and_std_may_be_bare_numbers(tmp_path):
    """The docs say "one value or one per channel": a bare number is one value, not a TypeError."""
    bare = ImageFolder(tmp_path, mean=0.5, std=2)
    assert (bare.mean, bare.std) == ((0.5,), (2.0,))
    with pytest.raises(DataError, match="std must not contain 0"):
        ImageFolder(tmp_path, std=0.0)


# ---- decoded once: a calibration reads its data up to seven times (issue 19)


def _photo_folder(root: Path, count: int = 10, size=(14, 11)) -> Path:
    """RGB images of varied sizes in two class folders (the decode path Pillow really takes)."""
    rng = np.random.default_rng(3)
    for i in range(count):
        shape = (size[0] + i % 3, size[1] + i % 2, 3)
        _write(root / f"c{i % 2}" / f"{i:02d}.png", rng.integers(0, 256, shape))
    return root


RGB_NCHW = [InputSpec("input", np.dtype(np.float32), (None, 3, 8, 8))]


def _batches(source, batch_size=4, **kwargs):
    return list(iter_batches(source, RGB_NCHW, batch_size=batch_size, **kwargs))


def _same(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.feeds.keys() == y.feeds.keys()
        for key in x.feeds:
            assert x.feeds[key].dtype == y.feeds[key].dtype
            np.testing.assert_array_equal(x.feeds[key], y.feeds[key])
        np.testing.assert_array_equal(x.labels, y.labels)


def test_decoded_folder_decodes_once_and_replays_the_same_batches(tmp_path, monkeypatch):
    from nabn_onnx.data import DecodedFolder, count_samples, decoded_once

    folder = ImageFolder(_photo_folder(tmp_path / "val"), resize=9, crop=8, mean=(0.4, 0.5, 0.6), std=0.2)
    direct = _batches(folder)
    decoded = decoded_once(folder)
    assert isinstance(decoded, DecodedFolder) and count_samples(decoded) == 10
    assert count_samples(tmp_path / "val") == 10  # a folder path is counted too (auto holds out whole batches)
    calls = []
    real = ImageFolder._finish
    monkeypatch.setattr(ImageFolder, "_finish", lambda self, *a: calls.append(a[0]) or real(self, *a))
    first = _batches(decoded)
    assert len(calls) == 10
    _same(first, direct)
    second, third = _batches(decoded), _batches(decoded)
    assert len(calls) == 10, "later passes must read the decoded batches back, not decode again"
    _same(second, direct)
    _same(third, direct)
    # another batching of the same folder is decoded (once) on its own
    _same(_batches(decoded, batch_size=3), _batches(folder, batch_size=3))
    assert len(calls) == 10 + 10 + 10  # the wrapper's new batching, then the direct read
    _batches(decoded, batch_size=3)
    assert len(calls) == 30
    spool = decoded._spool
    assert spool is not None and Path(spool).is_dir()
    decoded.close()
    assert not Path(spool).exists()
    _same(_batches(decoded), direct)  # closed: decoded again, same batches


def test_decoded_folder_continues_a_pass_that_stopped_early(tmp_path, monkeypatch):
    from nabn_onnx.data import decoded_once

    folder = ImageFolder(_photo_folder(tmp_path / "val"), resize=9, crop=8)
    decoded = decoded_once(folder)
    calls = []
    real = ImageFolder._finish
    monkeypatch.setattr(ImageFolder, "_finish", lambda self, *a: calls.append(a[0]) or real(self, *a))
    _same(_batches(decoded, max_batches=1), _batches(folder, max_batches=1))
    # iter_batches reads one batch ahead (a last batch too small is dropped): 2 of 3 raw batches, each
    assert len(calls) == 8 + 8
    _same(_batches(decoded), _batches(folder))
    assert len(calls) == 16 + 2 + 10  # the wrapper decodes only the third batch (2 images)


def test_decoded_folder_falls_back_to_decoding_when_the_disk_refuses(tmp_path, monkeypatch):
    from nabn_onnx.data import decoded_once

    folder = ImageFolder(_photo_folder(tmp_path / "val"), resize=9, crop=8)
    direct = _batches(folder)
    decoded = decoded_once(folder)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    _same(_batches(decoded), direct)
    _same(_batches(decoded), direct)
    assert decoded._spool is None


def test_decoding_on_threads_keeps_order_and_the_first_bad_image(tmp_path):
    import nabn_onnx.data.images as images

    root = _photo_folder(tmp_path / "val", count=12)
    folder = ImageFolder(root, resize=9, crop=8)
    paths = folder.files()[0]
    serial = [folder._load(p, 3, (8, 8)) for p in paths]
    threaded = folder._load_all(paths, 3, (8, 8))
    for a, b in zip(serial, threaded):
        np.testing.assert_array_equal(a, b)
    assert images._DECODE_THREADS >= 2
    (paths[5]).write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 10)
    (paths[9]).write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=f"cannot read image {paths[5]}"):
        folder._load_all(paths, 3, (8, 8))


def test_calibrate_and_split_take_an_image_folder_with_its_options(tmp_path, capsys):
    import onnx

    model = small_cnn(seed=0, size=8)
    onnx.save(model, tmp_path / "m.onnx")
    _photo_folder(tmp_path / "imgs", count=16)
    image_options = ["--resize", "9", "--crop", "8", "--mean", "0.5", "--std", "0.25"]  # gray model
    common = [str(tmp_path / "m.onnx"), "--data", str(tmp_path / "imgs"), *image_options, "-q"]
    assert main(["split", *common, "--batch-size", "8", "-o", str(tmp_path / "s.onnx")]) == 0
    assert main(["calibrate", *common, "--noise", "mul", "--eta", "0.1", "--batch-size", "4",
                 "--test", str(tmp_path / "imgs"), "-o", str(tmp_path / "c.onnx")]) == 0  # fmt: skip
    assert (tmp_path / "s.onnx").exists() and (tmp_path / "c.onnx").exists()
    assert not list(Path(tmp_path).glob("**/nabn-spool-*"))
    # the same statistics as the folder read through the Python API with the same preprocessing
    from nabn_onnx import calibrate

    source = ImageFolder(tmp_path / "imgs", resize=9, crop=8, mean=0.5, std=0.25)
    from nabn_onnx.noise import MulNoise

    result = calibrate(model, source, noise=MulNoise(eta=0.1, seed=0), batch_size=4)
    from onnx import numpy_helper

    saved = {t.name: numpy_helper.to_array(t) for t in onnx.load(tmp_path / "c.onnx").graph.initializer}
    for tensor in result.model.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(tensor), saved[tensor.name])
    capsys.readouterr()
    assert main(["calibrate", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "x.npz"), "--mean", "0.5"]) != 0
    assert "--mean apply to image folders only" in capsys.readouterr().err


def test_a_failed_calibration_leaves_no_decoded_images(tmp_path, monkeypatch):
    import os
    import tempfile

    from nabn_onnx import calibrate
    from nabn_onnx.calibration import Calibrator
    from nabn_onnx.noise import MulNoise

    def spools():
        return sorted(p for p in Path(tempfile.gettempdir()).glob(f"nabn-spool-{os.getpid()}.*"))

    before = spools()
    folder = ImageFolder(_photo_folder(tmp_path / "imgs", count=16), resize=9, crop=8, mean=0.5, std=0.25)
    seen = []
    real = Calibrator.measure_noisy

    def fails(self, job, data, bar=None):
        seen.append(spools())
        real(self, job, data, bar)
        raise RuntimeError("a step failed")

    monkeypatch.setattr(Calibrator, "measure_noisy", fails)
    with pytest.raises(RuntimeError, match="a step failed"):
        calibrate(small_cnn(seed=0, size=8), folder, noise=MulNoise(eta=0.1, seed=0), batch_size=4)
    assert len(seen[0]) == len(before) + 1  # the decoded batches were there while the job ran
    assert spools() == before


def test_image_options_apply_to_whichever_path_is_a_folder(tmp_path, capsys):
    """Calibration images in a folder and a labelled test .npz: the options read the folder, the .npz is as is."""
    import onnx

    model = small_cnn(seed=0, size=8)
    onnx.save(model, tmp_path / "m.onnx")
    _photo_folder(tmp_path / "imgs", count=16)
    test = tmp_path / "test.npz"
    np.savez(test, input=images(20, seed=4), labels=np.arange(20) % 10)
    options = ["--resize", "9", "--crop", "8", "--mean", "0.5", "--std", "0.25", "--noise", "mul", "--eta", "0.1"]
    argv = ["calibrate", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "imgs"), "--test", str(test)]
    assert main([*argv, *options, "--batch-size", "4", "-o", str(tmp_path / "c.onnx")]) == 0
    assert "top1 on test.npz: clean" in capsys.readouterr().out
    both = ["calibrate", str(tmp_path / "m.onnx"), "--data", str(test), "--test", str(test), "--mean", "0.5"]
    assert main(both) != 0
    assert f"--mean apply to image folders only, and none of {test}, {test} is a folder" in capsys.readouterr().err


def test_image_options_without_any_data_are_refused(capsys):
    model = str(Path(__file__).resolve().parent.parent / "sample_models" / "resnet_fused.onnx")
    assert main(["split", model, "--mean", "0.5", "-o", "unused.onnx"]) != 0
    assert "--mean apply to image folders only, and no data was given" in capsys.readouterr().err
    assert not Path("unused.onnx").exists()
