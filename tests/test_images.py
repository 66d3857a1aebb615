"""Image folders: labels from sorted class folders, resize and crop, normalization, layouts, errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from nabn_onnx import DataError, NabnError, evaluate
from nabn_onnx.cli import main
from nabn_onnx.data import ImageFolder, InputSpec, input_specs, iter_batches

from builders import small_cnn

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
