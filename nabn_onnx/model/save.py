"""Saving a model: atomically, streamed one initializer at a time, with external data above protobuf's 2 GB limit.

* :func:`save_model` writes to a temporary file in the target folder and renames it into
  place; it switches to external data (``<name>.data``) above :data:`PROTOBUF_LIMIT` or
  when asked.
* :func:`serialize_model` is the streaming protobuf serializer it writes with.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, List, Optional, Sequence, Tuple, Union

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from onnx import ModelProto, StringStringEntryProto, TensorProto, external_data_helper

from ..errors import ModelError
from ..tempfiles import PARTIAL_PREFIX, clean_stale_once, owned_prefix
from .files import check_output_folder, sync_file, sync_folder
from .initializers import copy_fields, model_size_bytes, set_field

__all__ = ["save_model", "serialize_model", "encode_varint", "PROTOBUF_LIMIT", "EXTERNAL_THRESHOLD"]

logger = logging.getLogger(__name__)


#: Protobuf cannot serialize a message of 2 GB or more.
PROTOBUF_LIMIT = 2**31 - 1


def _should_use_external(model: ModelProto, external_data: Optional[bool]) -> bool:
    if external_data is not None:
        return external_data
    return model_size_bytes(model) >= PROTOBUF_LIMIT - (64 << 20)


def save_model(
    model: ModelProto,
    path: Union[str, os.PathLike],
    *,
    external_data: Optional[bool] = None,
    extra_initializers: Sequence[TensorProto] = (),
    text: bool = True,
) -> Path:
    """Write ``model`` to ``path`` atomically.

    The model is written to a temporary file in the target folder and renamed into place,
    so a failure leaves neither a partial file nor a changed old one. With external data
    (forced by ``external_data=True``, automatic above protobuf's 2 GB limit) the tensors go
    to ``<name>.data`` beside the model; ``model`` keeps its tensors in memory either way.

    Args:
        model: the model to write.
        path: the ``.onnx`` file to write.
        external_data: ``True`` to store tensors in a side file, ``False`` to forbid it,
            ``None`` to decide by size.
        extra_initializers: initializers written after the model's own, read where they
            are (see :func:`without_large_initializers`).
        text: ``False`` leaves out the doc strings of the model, its graph and the graph's
            nodes and inputs and outputs, and the values of ``metadata_props`` (keys are
            kept): for a copy only onnxruntime reads, which would otherwise hold that text
            for the life of its session.

    Returns:
        The path written.

    Raises:
        ModelError: the target folder does not exist or is not writable.
    """
    path = Path(path)
    check_output_folder(path)
    folder = path.parent if str(path.parent) else Path(".")
    use_external = _should_use_external(model, external_data)
    try:
        clean_stale_once(folder, (PARTIAL_PREFIX,))  # partials a killed run left here (tempfiles)
        with tempfile.TemporaryDirectory(prefix=owned_prefix(PARTIAL_PREFIX), dir=folder) as tmp:
            tmp_model = Path(tmp) / path.name
            if use_external:
                data_name = path.name + ".data"
                with open(tmp_model, "wb") as fh, open(Path(tmp) / data_name, "wb") as data:
                    serialize_model(model, fh, data=data, location=data_name, extra=extra_initializers, text=text)
                    sync_file(fh)
                    sync_file(data)
                _replace_pair(Path(tmp), tmp_model, path, data_name)
            else:
                with open(tmp_model, "wb") as fh:
                    serialize_model(model, fh, extra=extra_initializers, text=text)
                    sync_file(fh)
                os.replace(tmp_model, path)
            sync_folder(folder)
    except PermissionError as exc:
        raise ModelError(f"cannot write {path}: {exc.strerror}") from None
    except OSError as exc:
        raise ModelError(f"cannot write {path}: {exc.strerror or exc}") from None
    logger.debug("saved %s (external data: %s)", path, use_external)
    return path


#: Tensors at least this large go to the external data file (onnx's own default threshold).
EXTERNAL_THRESHOLD = 1024


#: External tensors start at multiples of this, so onnxruntime can map them.
_ALIGNMENT = 4096


_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5  # field numbers in onnx.proto


def encode_varint(value: int) -> bytes:
    """``value`` as a protobuf varint (7 bits a byte, low bits first): the tag and length prefixes of a field."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


#: A serialized stretch of a message: a tag (and length), what follows it (bytes, or a
#: submessage serialized only when written), and the size of the two.
_Piece = Tuple[bytes, Union[bytes, Message], int]


def _pieces(message: Any, number: int, *, after: bool, text: bool = True) -> List[_Piece]:
    """``message``'s fields numbered below ``number`` (above it with ``after``), as they serialize.

    A submessage (a node, a ``metadata_props`` entry) is kept as itself behind its tag and
    length and serialized when written, and text is encoded straight to its bytes, one field
    at a time: nothing is copied into another message first, so a large doc string or
    metadata value costs one copy at a time, not three. Without ``text``, doc strings are
    left out (the message's own and its submessages') and ``metadata_props`` keep their keys only.
    """
    pieces: List[_Piece] = []
    for field in sorted(message.DESCRIPTOR.fields, key=lambda f: f.number):
        if field.number == number or (field.number > number) != after:
            continue
        if field.is_repeated and not len(getattr(message, field.name)):
            continue
        if not field.is_repeated and not message.HasField(field.name):
            continue
        if not text and field.name == "doc_string":
            continue
        tag = encode_varint(field.number << 3 | 2)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            value = getattr(message, field.name)
            for item in value if field.is_repeated else (value,):
                item = item if text else _without_text(item)
                size = item.ByteSize()
                head = tag + encode_varint(size)
                pieces.append((head, item, len(head) + size))
        elif field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES) and not field.is_repeated:
            data = getattr(message, field.name)
            data = data.encode("utf-8") if isinstance(data, str) else data
            head = tag + encode_varint(len(data))
            pieces.append((head, data, len(head) + len(data)))
        else:  # numbers and repeated text: protobuf encodes the one field
            single = type(message)()
            set_field(single, field, getattr(message, field.name))
            head = single.SerializeToString()
            pieces.append((head, b"", len(head)))
    return pieces


def _without_text(item: Message) -> Message:
    """``item`` without its doc string (a ``metadata_props`` entry: with its key only), or itself if it has none."""
    if isinstance(item, StringStringEntryProto):
        return StringStringEntryProto(key=item.key) if item.value else item
    if "doc_string" in item.DESCRIPTOR.fields_by_name and item.HasField("doc_string"):
        light = type(item)()
        copy_fields(item, light, skip="doc_string")
        return light
    return item


def _pieces_size(pieces: Sequence[_Piece]) -> int:
    return sum(size for _, _, size in pieces)


def _write_pieces(fh: BinaryIO, pieces: Sequence[_Piece]) -> None:
    for head, body, _ in pieces:
        fh.write(head)
        fh.write(body if isinstance(body, bytes) else body.SerializeToString())


def _external_stub(tensor: TensorProto, location: str, offset: int, length: int) -> TensorProto:
    stub = TensorProto()
    for field, value in tensor.ListFields():
        if field.name in ("raw_data", "external_data", "data_location"):
            continue
        if field.is_repeated:
            getattr(stub, field.name).extend(value)
        else:
            setattr(stub, field.name, value)
    stub.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        stub.external_data.add(key=key, value=value)
    return stub


def serialize_model(
    model: ModelProto,
    fh: BinaryIO,
    *,
    data: Optional[BinaryIO] = None,
    location: str = "",
    extra: Sequence[TensorProto] = (),
    text: bool = True,
) -> None:
    """Serialize ``model`` into ``fh`` one initializer at a time, never the whole model at once.

    Without ``data`` the bytes are exactly ``model.SerializeToString()`` (fields in number
    order: the model's fields before ``graph``, the graph's fields before ``initializer``,
    each initializer, the rest), but the peak memory is one tensor, not two copies of the
    model (protobuf's serialization buffer and the Python ``bytes``). With ``data`` (an open
    file named ``location`` beside the model), every initializer of at least
    :data:`EXTERNAL_THRESHOLD` bytes of ``raw_data`` is written there, page-aligned, and
    referenced from the model. ``extra`` initializers follow the model's own. ``model``
    itself is never modified. Without ``text``, doc strings and ``metadata_props`` values
    are left out (see :func:`save_model`).
    """
    graph_head = _pieces(model.graph, _GRAPH_INITIALIZER, after=False, text=text)
    graph_tail = _pieces(model.graph, _GRAPH_INITIALIZER, after=True, text=text)
    pieces = []  # (tensor, stub or None, serialized size)
    offset = 0
    for tensor in itertools.chain(model.graph.initializer, extra):
        stub = None
        if data is not None and tensor.HasField("raw_data") and not external_data_helper.uses_external_data(tensor):
            raw = tensor.raw_data
            if len(raw) >= EXTERNAL_THRESHOLD:
                pad = -offset % _ALIGNMENT
                data.write(b"\0" * pad)
                offset += pad
                data.write(raw)
                stub = _external_stub(tensor, location, offset, len(raw))
                offset += len(raw)
            del raw
        pieces.append((tensor, stub, (stub or tensor).ByteSize()))
    inits = sum(1 + len(encode_varint(size)) + size for _, _, size in pieces)
    _write_pieces(fh, _pieces(model, _MODEL_GRAPH, after=False, text=text))
    if model.HasField("graph"):
        graph_size = _pieces_size(graph_head) + inits + _pieces_size(graph_tail)
        fh.write(encode_varint(_MODEL_GRAPH << 3 | 2) + encode_varint(graph_size))
        _write_pieces(fh, graph_head)
        for tensor, stub, size in pieces:
            fh.write(encode_varint(_GRAPH_INITIALIZER << 3 | 2) + encode_varint(size))
            fh.write((stub or tensor).SerializeToString())
        _write_pieces(fh, graph_tail)
    _write_pieces(fh, _pieces(model, _MODEL_GRAPH, after=True, text=text))


def _replace_pair(tmp: Path, tmp_model: Path, path: Path, data_name: str) -> None:
    """Move ``<model>`` and its ``<model>.data`` into place; on failure put back what was there.

    The data file goes first and the model last, so the model never names data that is not
    there; an older data file of the same name is kept aside until the model is in place.
    """
    data_path = path.parent / data_name
    backup = None
    if data_path.exists():
        backup = tmp / (data_name + ".old")
        os.replace(data_path, backup)
    moved = False
    try:
        os.replace(tmp / data_name, data_path)
        moved = True
        os.replace(tmp_model, path)
    except BaseException:
        if moved:
            data_path.unlink()
        if backup is not None:
            os.replace(backup, data_path)
        raise
