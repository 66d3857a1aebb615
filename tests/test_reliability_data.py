"""Reliability of the data layer (issue 20, items 6, 10, 11): a hostile ``.npz`` header or image
ends in one line naming the file, before the bytes it claims are read or decoded.

Every input is made here: ``.npy`` headers written by hand over a tiny payload, and a 2 MB
member that inflates to 2 GiB. Cases that cost memory or time when they regress run the CLI in a child process
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

from builders import images, small_cnn

SAMPLES = 32
HUGE = 2**32
#: the issue's 2 MB member: two 16384x16384 float32 images of zeros (2 GiB) deflated
BOMB_SHAPE = (2, 1, 16384, 16384)


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
