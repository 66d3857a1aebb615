"""Reliability of the data layer (issue 20, items 6, 10, 11): a hostile ``.npz`` header or image
ends in one line naming the file, before the bytes it claims are read or decoded.

Every input is made here: ``.npy`` headers written by hand over a tiny payload, a 2 MB member
that inflates to 2 GiB, PNGs whose header claims a size their data do not have, a real 1x20000
PNG of about 100 bytes. Cases that cost memory or time when they regress run the CLI in a child process
with a bounded address space (``test_reliability._bounded_cli``); the others run ``main`` here.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import onnx
import pytest
from test_reliability import _bounded_cli, _one_line, _run

import nabn_onnx.data.images as images_module
from nabn_onnx import DataError
from nabn_onnx.data import ImageFolder, InputSpec, input_specs, iter_batches

from builders import images, small_cnn

SAMPLES = 32
HUGE = 2**32
#: the issue's 2 MB member: two 16384x16384 float32 images of zeros (2 GiB) deflated
BOMB_SHAPE = (2, 1, 16384, 16384)
#: how far a JPEG decoded at reduced scale may stray from the full decode (in [0, 1] units)
DRAFT_TOLERANCE = 0.02


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    onnx.save(small_cnn(seed=3), tmp_path / "model.onnx")
    return tmp_path


def _calibrate(ws: Path, data: Path):
    return ["calibrate", ws / "model.onnx", "--data", data, "--noise", "mul", "--eta", "0.1", "-o", ws / "out.onnx"]


# --------------------------------------------------------------------------- .npz headers


def _npy(shape: Tuple[int, ...], payload: bytes = b"\0" * 64, descr: str = "<f4") -> bytes:
    """An .npy stream: a header claiming ``shape`` of ``descr``, then ``payload`` (whatever its size)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": shape})
    return header.getvalue() + payload


def _good() -> bytes:
    stream = io.BytesIO()
    np.save(stream, images(SAMPLES))
    return stream.getvalue()


def _npz(path: Path, members: Dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(f"{name}.npy", data)
    return path


def _patched(path: Path, find: bytes, offset: int, value: bytes) -> Path:
    """``path`` with ``value`` written ``offset`` bytes after the first ``find``."""
    data = bytearray(path.read_bytes())
    at = data.index(find) + offset
    data[at : at + len(value)] = value
    path.write_bytes(bytes(data))
    return path


def _bad_crc(path: Path) -> Path:
    path = _npz(path, {"input": _good()}, zipfile.ZIP_STORED)
    return _patched(path, b"NUMPY", 300, b"\xff")


def _claims_more_than_deflate_gives(path: Path) -> Path:
    """Labels of 1 GiB by their header and the zip's directory, from a few deflated bytes."""
    shape = (SAMPLES, 4096, 2048)
    path = _npz(path, {"labels": _npy(shape, b""), "input": _good()})
    claimed = struct.pack("<I", int(np.prod(shape)) * 4 + 128)
    return _patched(path, b"PK\x01\x02", 24, claimed)  # the first central entry's uncompressed size


NPZ_HEADERS = {
    # item 6: the element count overflows int64 (then "cannot reshape", a traceback)
    "overflowing shape": (lambda p: _npz(p, {"input": _npy((4, HUGE, HUGE, 1))}), ("(4, 4294967296, 4294967296, 1)",)),
    "overflowing labels": (
        lambda p: _npz(p, {"input": _good(), "labels": _npy((SAMPLES, HUGE, HUGE))}),
        ("'labels'", "4294967296"),
    ),
    # item 10: the shape is held to the model's before anything is read, not found "truncated" after
    "shape beyond the model": (
        lambda p: _npz(p, {"input": _npy(BOMB_SHAPE)}),
        ("(2, 1, 16384, 16384)", "(N, 1, 8, 8)"),
    ),
    "negative dimension": (lambda p: _npz(p, {"input": _npy((4, 1, -8, -8))}), ("negative",)),
    "not an npy header": (lambda p: _npz(p, {"input": b"garbage" * 20}), ("'input'", "magic")),
    "bad CRC": (_bad_crc, ("'input'", "damaged", "CRC")),
    "sizes deflate cannot give": (_claims_more_than_deflate_gives, ("'labels'", "damaged")),
}


@pytest.mark.parametrize("case", sorted(NPZ_HEADERS))
def test_npz_headers_are_checked_before_a_row_is_read(ws: Path, capsys, case: str):
    make, words = NPZ_HEADERS[case]
    data = make(ws / "bad.npz")
    code, _out, err = _run(capsys, _calibrate(ws, data))
    line = _one_line(err, "calibrate")
    assert code == 1 and "bad.npz" in line
    for word in words:
        assert word in line, line
    assert not (ws / "out.onnx").exists()


def _deflated_zeros(path: Path, shape: Tuple[int, ...]) -> Path:
    """An .npz whose one member is ``shape`` float32 zeros, deflated (1028 to 1) without the time to compress them.

    After a full flush deflate starts afresh, so every 16 MiB of zeros compresses to the same bytes.
    """
    header, chunk = _npy(shape, b""), bytes(16 << 20)
    count = int(np.prod(shape)) * 4 // len(chunk)
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = squeeze.compress(header) + squeeze.flush(zlib.Z_FULL_FLUSH)
    piece = squeeze.compress(chunk) + squeeze.flush(zlib.Z_FULL_FLUSH)
    stream += piece * count + squeeze.flush()
    crc = zlib.crc32(header)
    for _ in range(count):
        crc = zlib.crc32(chunk, crc)
    name, size = b"input.npy", len(header) + count * len(chunk)
    sizes = struct.pack("<III", crc, len(stream), size)
    local = b"PK\x03\x04" + struct.pack("<HHHHH", 20, 0, 8, 0, 0x21) + sizes + struct.pack("<HH", len(name), 0)
    central = b"PK\x01\x02" + struct.pack("<HHHHHH", 20, 20, 0, 8, 0, 0x21) + sizes
    central += struct.pack("<HHHHHII", len(name), 0, 0, 0, 0, 0, 0) + name
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, len(central), len(local) + len(name) + len(stream), 0)
    path.write_bytes(local + name + stream + central + end)
    return path


def test_a_2mb_npz_claiming_two_16k_images_is_refused_without_inflating_them(ws: Path):
    """Item 10: 11 s and 4.2 GB before the shape error; now the header is refused before a row is read."""
    data = _deflated_zeros(ws / "bomb.npz", BOMB_SHAPE)
    with zipfile.ZipFile(data) as archive:  # the member is real: 2 GiB of zeros in about 2 MB
        assert archive.infolist()[0].file_size > 1000 * data.stat().st_size
    done = _bounded_cli(_calibrate(ws, data))
    line = _one_line(done.stderr, "calibrate")
    assert done.returncode == 1 and "(2, 1, 16384, 16384)" in line and "(N, 1, 8, 8)" in line
    assert not (ws / "out.onnx").exists()


# --------------------------------------------------------------------------- images


def _pillow():
    """PIL.Image, or a skip (the .npz cases above run without Pillow)."""
    return pytest.importorskip("PIL.Image")


def _png(array: np.ndarray) -> bytes:
    stream = io.BytesIO()
    _pillow().fromarray(array.astype(np.uint8)).save(stream, "PNG")
    return stream.getvalue()


def _forged_png(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header (IHDR, CRC fixed) claims ``width`` x ``height``."""
    data = bytearray(_png(np.zeros((1, 1))))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _folder(root: Path, files: Dict[str, bytes], shape: Tuple[int, int] = (8, 8), count: int = 3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        (root / f"good{index}.png").write_bytes(_png(rng.integers(0, 256, shape)))
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


@pytest.mark.parametrize("side", [50000, 10000], ids=["beyond Pillow's bomb error", "beyond Pillow's warning"])
def test_an_image_header_claiming_a_huge_size_is_refused_in_one_line(ws: Path, side: int):
    """Item 6: DecompressionBombError is no OSError (a traceback); a warning line came before the error."""
    folder = _folder(ws / "images", {"huge.png": _forged_png(side, side)})
    done = _bounded_cli(_calibrate(ws, folder))
    line = _one_line(done.stderr, "calibrate")
    assert done.returncode == 1 and "huge.png" in line
    assert not (ws / "out.onnx").exists()


def test_a_thin_png_is_refused_before_it_is_resized(tmp_path: Path):
    """Item 11: a 1x20000 PNG among a 224x224 model's images took 4.1 GB and 44 s to resize."""
    onnx.save(small_cnn(seed=3, size=224), tmp_path / "model.onnx")
    thin = _png(np.zeros((1, 20000)))
    assert len(thin) < 200
    folder = _folder(tmp_path / "images", {"thin.png": thin}, shape=(240, 320))
    done = _bounded_cli(_calibrate(tmp_path, folder))
    line = _one_line(done.stderr, "calibrate")
    assert done.returncode == 1 and "thin.png" in line and "20000x1" in line
    assert not (tmp_path / "out.onnx").exists()


def _spec(height: int, width: int) -> list:
    return [InputSpec("input", np.dtype(np.float32), (None, 1, height, width))]


ASPECTS = [  # crop (height, width), image (width, height), refused; ids say width x height
    ((8, 8), (128, 8), False),
    ((8, 8), (8, 128), False),
    ((8, 8), (136, 8), True),
    ((8, 8), (8, 136), True),
    ((4, 16), (256, 4), False),  # 64:1 is 16 times the crop's own 4:1
    ((4, 16), (4, 16), False),  # 1:4 is a sixteenth of it
    ((4, 16), (272, 4), True),
    ((4, 16), (4, 17), True),
]


@pytest.mark.parametrize(
    "crop, size, refused",
    ASPECTS,
    ids=[f"crop {c[1]}x{c[0]}, image {w}x{h}, {'refused' if r else 'read'}" for c, (w, h), r in ASPECTS],
)
def test_the_aspect_bound_is_16_to_1_against_the_crop(tmp_path: Path, crop, size, refused: bool):
    width, height = size
    folder = _folder(tmp_path / "images", {"odd.png": _png(np.zeros((height, width)))}, shape=crop, count=1)
    batches = iter_batches(ImageFolder(folder), _spec(*crop), batch_size=2)
    if not refused:
        assert sum(b.size for b in batches) == 2
        return
    with pytest.raises(DataError, match=rf"odd\.png is {width}x{height}: its proportions"):
        list(batches)


def test_a_resize_beyond_the_pixel_bound_is_refused(tmp_path: Path):
    """The resized image is held to the decoded bound too (2**25 pixels for a small crop)."""
    folder = _folder(tmp_path / "images", {}, count=1)
    with pytest.raises(DataError, match=r"good0\.png would be resized to 6000x6000"):
        list(iter_batches(ImageFolder(folder, resize=6000), _spec(8, 8)))


def _gradient(width: int, height: int) -> np.ndarray:
    return np.add.outer(np.linspace(0, 120, height), np.linspace(0, 120, width))


def test_a_jpeg_above_the_pixel_bound_is_decoded_at_reduced_scale(tmp_path: Path, monkeypatch):
    """Pillow's draft decodes a JPEG at 1/8 scale where that keeps the resized size; a PNG cannot be: refused."""
    pil = _pillow()
    folder = tmp_path / "images"
    folder.mkdir()
    pil.fromarray(_gradient(400, 300).astype(np.uint8)).save(folder / "photo.jpg", quality=95)
    (full,) = iter_batches(ImageFolder(folder), _spec(8, 8))
    monkeypatch.setattr(images_module, "_MAX_PIXELS", 4096)  # 400x300 is above it, 50x38 below
    (drafted,) = iter_batches(ImageFolder(folder), _spec(8, 8))
    assert np.abs(drafted.feeds["input"] - full.feeds["input"]).max() < DRAFT_TOLERANCE
    monkeypatch.setattr(images_module, "_PIXELS_PER_CROP", 1)
    monkeypatch.setattr(images_module, "_MAX_PIXELS", 1024)  # below even the 1/8 scale
    with pytest.raises(DataError, match=r"photo\.jpg is 400x300 \(120000 pixels\) \(still 50x38 at reduced scale\)"):
        list(iter_batches(ImageFolder(folder), _spec(8, 8)))
    (folder / "photo.jpg").unlink()
    (folder / "photo.png").write_bytes(_png(_gradient(400, 300)))
    with pytest.raises(DataError, match=r"photo\.png is 400x300 \(120000 pixels\), above the 1024 pixels"):
        list(iter_batches(ImageFolder(folder), _spec(8, 8)))


def test_a_4000x3000_jpeg_photo_is_read_as_before_by_a_224_model(tmp_path: Path):
    """Within the bounds nothing changes: a 12-megapixel photo is resized (bilinear) and center-cropped, bit for bit."""
    pil = _pillow()
    folder = tmp_path / "images"
    folder.mkdir()
    pil.fromarray(_gradient(4000, 3000).astype(np.uint8)).save(folder / "photo.jpg", quality=90)
    specs = input_specs(small_cnn(seed=3, size=224))
    (batch,) = iter_batches(ImageFolder(folder), specs)
    with pil.open(folder / "photo.jpg") as image:
        resized = image.convert("L").resize((299, 224), pil.BILINEAR)
    expected = np.asarray(resized.crop((37, 0, 261, 224)), dtype=np.float32) / 255.0
    assert batch.feeds["input"].shape == (1, 1, 224, 224)
    assert np.array_equal(batch.feeds["input"][0, 0], expected)
