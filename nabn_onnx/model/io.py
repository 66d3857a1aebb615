"""Loading and saving ONNX models.

* :func:`load_model` reads a model (with its external data, whose locations are checked
  to stay inside the model's folder), lifts weights stored as ``Constant`` nodes into
  initializers so every pass sees one kind of weight, and runs onnx's checker.
* :func:`save_model` writes atomically (a temporary file in the target folder, then a
  rename) and switches to external data above protobuf's 2 GB limit or when asked.
* :func:`record` writes ``nabn.*`` provenance keys into ``metadata_props``.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError
from onnx import ModelProto, TensorProto, external_data_helper, numpy_helper

from ..errors import ModelError
from .gsgraph import GsGraph, is_gs_graph, restore_model_fields, to_model

__all__ = [
    "ModelLike",
    "load_model",
    "save_model",
    "record",
    "read_record",
    "model_size_bytes",
    "without_large_initializers",
    "MIN_OPSET",
    "check_output",
    "check_output_folder",
    "check_paths",
    "PROTOBUF_LIMIT",
    "default_opset",
    "weightless_copy",
    "subgraphs",
    "all_nodes",
    "atomic_write_text",
    "atomic_write_bytes",
    "bypass_initializer_identities",
    "lift_constant_weights",
    "set_initializer",
]

logger = logging.getLogger(__name__)

#: A model the public calls take: a path, a ``ModelProto`` or an ``onnx_graphsurgeon.Graph``.
ModelLike = Union[str, os.PathLike, ModelProto, GsGraph]

#: BatchNormalization's signature is stable from opset 9 on (``spatial`` was dropped).
MIN_OPSET = 9
#: Protobuf cannot serialize a message of 2 GB or more.
PROTOBUF_LIMIT = 2**31 - 1
_METADATA_PREFIX = "nabn."


def default_opset(model: ModelProto) -> int:
    """The version of the default ONNX domain the model imports."""
    return _default_opset(model)


def _default_opset(model: ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise ModelError("the model imports no version of the default ONNX domain (opset_import is empty)")


def _check_external_locations(model: ModelProto, base_dir: Path) -> None:
    """Refuse external-data locations that leave the model's folder (``..``, absolute, symlinks)."""
    base = base_dir.resolve()
    for tensor in external_data_helper._get_all_tensors(model):  # onnx's own walker
        if not external_data_helper.uses_external_data(tensor):
            continue
        try:
            info = external_data_helper.ExternalDataInfo(tensor)
        except ValueError as exc:
            raise ModelError(f"tensor '{tensor.name}' has unreadable external-data fields ({exc})") from None
        for key in ("offset", "length"):
            if getattr(info, key, None) is not None and getattr(info, key) < 0:
                raise ModelError(f"tensor '{tensor.name}' has a negative external-data {key} ({getattr(info, key)})")
        location = info.location
        if not location or os.path.isabs(location) or Path(location).drive:
            raise ModelError(
                f"tensor '{tensor.name}' stores its data at '{location}': external data must be a relative "
                "path inside the model's folder"
            )
        target = (base / location).resolve()
        if base not in target.parents and target != base:
            raise ModelError(
                f"tensor '{tensor.name}' points outside the model's folder ('{location}' resolves to {target}); "
                "refusing to read it"
            )
        if not target.is_file():
            raise ModelError(
                f"tensor '{tensor.name}' stores its data in '{location}', which does not exist next to the model"
            )


def lift_constant_weights(model: ModelProto) -> int:
    """Turn ``Constant`` nodes holding a tensor into initializers, in place.

    Paddle and TensorFlow exporters often store weights as ``Constant`` nodes; lifting
    them lets every pass treat them as the initializers they are. Only the main graph is
    touched (subgraphs keep theirs).

    Returns:
        How many nodes were lifted.
    """
    graph = model.graph
    keep, lifted = [], []
    for node in graph.node:
        value = None
        if (
            node.op_type == "Constant"
            and node.domain in ("", "ai.onnx")
            and len(node.attribute) == 1
            and len(node.output) == 1
            and node.output[0]
        ):
            attr = node.attribute[0]
            if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                value = attr.t
        if value is None:
            keep.append(node)
            continue
        tensor = TensorProto()
        tensor.CopyFrom(value)
        tensor.name = node.output[0]
        lifted.append(tensor)
    if lifted:
        del graph.node[:]
        graph.node.extend(keep)
        graph.initializer.extend(lifted)
        logger.debug("lifted %d Constant nodes into initializers", len(lifted))
    return len(lifted)


def subgraphs(graph: onnx.GraphProto):
    """Every graph nested in ``graph``'s nodes (If/Loop/Scan bodies, recursively), not ``graph`` itself."""
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield attr.g
                yield from subgraphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield sub
                    yield from subgraphs(sub)


def all_nodes(graph: onnx.GraphProto):
    """The nodes of ``graph`` and of every graph nested in it."""
    yield from graph.node
    for sub in subgraphs(graph):
        yield from sub.node


def bypass_initializer_identities(model: ModelProto) -> int:
    """Remove ``Identity`` nodes that merely rename an initializer, in place.

    PyTorch's exporter without constant folding routes parameters it deduplicated (two
    BatchNorms with bit-identical biases, say) through ``Identity`` nodes; readers of the
    node then see a computed tensor where there is a constant. Consumers are pointed at the
    initializer itself; an Identity whose output is a graph output is kept.

    Returns:
        How many nodes were removed.
    """
    graph = model.graph
    constants = {t.name for t in graph.initializer} - {i.name for i in graph.input}
    # A subgraph may read the Identity's output (an If branch using a weight of the main
    # graph): its nodes are pointed at the initializer too. A subgraph output naming it stays.
    outputs = {o.name for o in graph.output} | {o.name for sub in subgraphs(graph) for o in sub.output}
    rename: Dict[str, str] = {}
    keep = []
    for node in graph.node:
        if (
            node.op_type == "Identity"
            and node.domain in ("", "ai.onnx")
            and len(node.input) == 1
            and len(node.output) == 1
            and node.output[0] not in outputs
        ):
            source = rename.get(node.input[0], node.input[0])
            if source in constants:
                rename[node.output[0]] = source
                continue
        keep.append(node)
    if not rename:
        return 0
    for node in keep + [n for sub in subgraphs(graph) for n in sub.node]:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del graph.node[:]
    graph.node.extend(keep)
    logger.debug("bypassed %d Identity node(s) of initializers", len(rename))
    return len(rename)


def model_size_bytes(model: ModelProto) -> int:
    """Bytes the model's tensors store (a cheap upper bound for the protobuf size).

    Counted from the data actually held, never from ``dims``: a hostile file can claim
    dims of 2**40 elements with no data, which must not switch the checker off.
    """
    total = 0
    for tensor in model.graph.initializer:
        if tensor.HasField("raw_data"):
            total += len(tensor.raw_data)
        else:
            values = (
                len(tensor.float_data)
                + len(tensor.int32_data)
                + len(tensor.int64_data)
                + len(tensor.double_data)
                + len(tensor.uint64_data)
            )
            total += values * 8 + sum(len(v) for v in tensor.string_data)
    return total


def load_model(model: ModelLike, *, check: bool = True) -> ModelProto:
    """Load a model from a path (or take a ``ModelProto`` or an onnx-graphsurgeon graph), ready for the passes.

    Args:
        model: path to an ``.onnx`` file, a loaded ``ModelProto`` (used as is, not copied) or
            an ``onnx_graphsurgeon.Graph`` (exported to a new ``ModelProto``, see :mod:`nabn_onnx.gsgraph`).
        check: run ``onnx.checker`` on the model.

    Returns:
        The model with external data loaded and ``Constant`` weights lifted into initializers.

    Raises:
        ModelError: the file is missing, not ONNX, fails the checker, points outside its
            folder for external data, or uses an opset older than :data:`MIN_OPSET`.
    """
    if isinstance(model, ModelProto):
        proto = model
    elif is_gs_graph(model):
        proto = to_model(model)
    else:
        path = Path(model)
        if not path.exists():
            raise ModelError(f"model file not found: {path}")
        if not path.is_file():
            raise ModelError(f"model path is not a file: {path}")
        try:
            proto = onnx.load_model(str(path), load_external_data=False)
        except (DecodeError, ValueError, RuntimeError, TypeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None
        except OSError as exc:
            raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None
        if not proto.HasField("graph"):
            raise ModelError(f"{path} is not an ONNX model: it has no graph")
        if any(external_data_helper.uses_external_data(t) for t in external_data_helper._get_all_tensors(proto)):
            _check_external_locations(proto, path.parent)
            try:
                external_data_helper.load_external_data_for_model(proto, str(path.parent))
            except (OSError, ValueError) as exc:
                raise ModelError(f"cannot read the external data of {path}: {exc}") from None
    if not proto.HasField("graph"):
        raise ModelError("the model has no graph")
    restore_model_fields(proto)  # saved with gs.export_onnx from a graph nabn-onnx returned
    _check_utf8(proto)
    opset = _default_opset(proto)
    if opset < MIN_OPSET:
        raise ModelError(
            f"the model uses opset {opset}; nabn-onnx needs opset {MIN_OPSET} or newer "
            "(convert it with onnx.version_converter.convert_version)"
        )
    _refuse_training_mode(proto)
    lift_constant_weights(proto)
    bypass_initializer_identities(proto)
    if check:
        check_model(proto)
    _check_initializer_sizes(proto)
    return proto


#: Types whose elements are packed below one byte (raw size is not numel * itemsize).
_PACKED_TYPES = {
    getattr(TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2") if hasattr(TensorProto, n)
}


def _check_initializer_sizes(model: ModelProto) -> None:
    """Refuse initializers whose stored data does not match their dims (a corrupt or hostile file).

    onnx's checker does not compare ``raw_data`` with ``dims`` and is skipped above 2 GB;
    without this a pass would fail deep inside numpy on the first such weight.
    """
    known = set(TensorProto.DataType.values()) - {TensorProto.UNDEFINED}
    for tensor in model.graph.initializer:
        if tensor.data_type not in known:
            raise ModelError(
                f"initializer '{tensor.name}' has an unknown data type ({tensor.data_type}); the file is corrupt"
            )
        if any(d < 0 for d in tensor.dims):
            raise ModelError(f"initializer '{tensor.name}' has negative dims {list(tensor.dims)}; the file is corrupt")
        if tensor.data_type in _PACKED_TYPES or tensor.data_type == TensorProto.STRING:
            continue
        if external_data_helper.uses_external_data(tensor):
            continue
        numel = 1
        for d in tensor.dims:
            numel *= d
        field = onnx.helper.tensor_dtype_to_field(tensor.data_type)
        if tensor.HasField("raw_data") and len(getattr(tensor, field)):
            raise ModelError(
                f"initializer '{tensor.name}' stores its values twice (raw_data and {field}); the file is corrupt"
            )
        if tensor.HasField("raw_data"):
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
            stored, wanted, unit = len(tensor.raw_data), numel * itemsize, "bytes"
        else:
            per = 2 if tensor.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128) else 1
            stored, wanted, unit = len(getattr(tensor, field)), numel * per, "values"
        if stored != wanted:
            raise ModelError(
                f"initializer '{tensor.name}' stores {stored} {unit} but its dims {list(tensor.dims)} need {wanted}; "
                "the file is corrupt or truncated"
            )


def _check_utf8(message, where: str = "model") -> None:
    """Refuse string fields that are not valid UTF-8.

    Protobuf parses them anyway and hands them to Python as ``bytes`` (or fails when one is
    read), which would surface far from the load. Only string and message fields are
    visited, so tensor bytes are never copied.
    """
    for field in message.DESCRIPTOR.fields:
        if field.type not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE):
            continue
        repeated = field.is_repeated
        if not repeated and not message.HasField(field.name):
            continue
        try:
            value = getattr(message, field.name)
            bad = field.type == FieldDescriptor.TYPE_STRING and any(
                isinstance(v, bytes) for v in (value if repeated else (value,))
            )
        except UnicodeDecodeError:  # some protobuf back ends fail on read instead of returning bytes
            bad = True
        if bad:
            raise ModelError(f"{where}.{field.name} holds text that is not valid UTF-8; the file is corrupt")
        if field.type == FieldDescriptor.TYPE_STRING:
            continue
        for item in value if repeated else (value,):
            _check_utf8(item, f"{where}.{field.name}")


def _refuse_training_mode(model: ModelProto) -> None:
    """A BatchNormalization exported in training mode would recompute its statistics on every batch."""
    for node in all_nodes(model.graph):
        if node.op_type != "BatchNormalization" or node.domain not in ("", "ai.onnx"):
            continue
        flagged = any(a.name == "training_mode" and a.i != 0 for a in node.attribute)
        if flagged or any(node.output[1:]):
            how = "training_mode=1" if flagged else "it has running-statistics outputs"
            raise ModelError(
                f"BatchNormalization '{node.name or node.output[0]}' is in training mode ({how}); export the model "
                "in eval mode (PyTorch: model.eval() before torch.onnx.export)"
            )


#: Initializers up to this many elements stay in the checker's copy (shape inference reads shape constants).
_CHECK_KEEP_ELEMENTS = 1024


def weightless_copy(model: ModelProto) -> ModelProto:
    """A copy of ``model`` without its weights' data: large initializers become graph inputs of the same type and shape.

    Everything else is kept, ``metadata_props`` included, and initializers of up to
    :data:`_CHECK_KEEP_ELEMENTS` elements stay (shape inference reads shape constants).
    For the checker and for shape inference, whatever the size of the weights.

    onnx's checker serializes the model it is given and parses it again in C++, two extra
    copies of every weight; the weights' own consistency is checked by
    :func:`_check_initializer_sizes` instead. This also lets models above 2 GB be checked.
    """
    light = ModelProto()
    _copy_fields(model, light, skip="graph")
    graph = model.graph
    _copy_fields(graph, light.graph, skip="initializer")
    listed = {i.name for i in graph.input}
    for tensor in graph.initializer:
        numel = 1
        for d in tensor.dims:
            numel *= d
        if numel <= _CHECK_KEEP_ELEMENTS:
            light.graph.initializer.append(tensor)
        elif tensor.name not in listed:
            light.graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
            )
    return light


def _copy_fields(src, dst, skip: str) -> None:
    """Copy every set field of the message ``src`` into ``dst`` except ``skip``."""
    for field, value in src.ListFields():
        if field.name != skip:
            _set_field(dst, field, value)


def _set_field(dst, field, value) -> None:
    """Set one field (as ``ListFields`` yields it) on the message ``dst``."""
    if field.is_repeated:
        getattr(dst, field.name).extend(value)
    elif field.type == field.TYPE_MESSAGE:
        getattr(dst, field.name).CopyFrom(value)
    else:
        setattr(dst, field.name, value)


def without_large_initializers(model: ModelProto, min_bytes: int = 1 << 16) -> Tuple[ModelProto, List[TensorProto]]:
    """A copy of ``model`` without its initializers of ``min_bytes`` or more, and those initializers.

    The initializers are returned as they are in ``model``, not copied: a pass that only
    rewrites nodes and small parameters (the statistics graph) works on the copy, and
    :func:`save_model` writes the two back together with ``extra_initializers``. This
    replaces a ``copy.deepcopy`` of every weight.
    """
    light = ModelProto()
    _copy_fields(model, light, skip="graph")
    _copy_fields(model.graph, light.graph, skip="initializer")
    large = []
    for tensor in model.graph.initializer:
        if tensor.ByteSize() >= min_bytes:
            large.append(tensor)
        else:
            light.graph.initializer.append(tensor)
    return light, large


def check_model(model: ModelProto, *, full: bool = False) -> None:
    """Run onnx's checker, turning its failure into a one-line :class:`ModelError`.

    The checker sees the model without its large weights (see :func:`weightless_copy`);
    :func:`load_model` checks those separately.
    """
    try:
        onnx.checker.check_model(weightless_copy(model), full_check=full)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"the model fails onnx's checker: {first}") from None
    except UnicodeDecodeError:  # the checker's message quotes a name that is not valid UTF-8
        raise ModelError("the model fails onnx's checker: it holds names or strings that are not valid UTF-8") from None


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

    Returns:
        The path written.

    Raises:
        ModelError: the target folder does not exist or is not writable.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ModelError(f"output folder does not exist: {folder}")
    if path.is_dir():
        raise ModelError(f"output path is a folder: {path}")
    use_external = _should_use_external(model, external_data)
    try:
        with tempfile.TemporaryDirectory(prefix=".nabn-", dir=folder) as tmp:
            tmp_model = Path(tmp) / path.name
            if use_external:
                data_name = path.name + ".data"
                with open(tmp_model, "wb") as fh, open(Path(tmp) / data_name, "wb") as data:
                    _write_model(model, fh, data=data, location=data_name, extra=extra_initializers)
                    _sync(fh)
                    _sync(data)
                _replace_pair(Path(tmp), tmp_model, path, data_name)
            else:
                with open(tmp_model, "wb") as fh:
                    _write_model(model, fh, extra=extra_initializers)
                    _sync(fh)
                os.replace(tmp_model, path)
            _sync_folder(folder)
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


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _split_fields(message, number: int):
    """Two copies of ``message``: its fields numbered below ``number`` and above it."""
    head, tail = type(message)(), type(message)()
    for field, value in message.ListFields():
        if field.number == number:
            continue
        _set_field(head if field.number < number else tail, field, value)
    return head, tail


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


def _write_model(model: ModelProto, fh, *, data=None, location: str = "", extra: Sequence[TensorProto] = ()) -> None:
    """Serialize ``model`` into ``fh`` one initializer at a time, never the whole model at once.

    Without ``data`` the bytes are exactly ``model.SerializeToString()`` (fields in number
    order: the model's fields before ``graph``, the graph's fields before ``initializer``,
    each initializer, the rest), but the peak memory is one tensor, not two copies of the
    model (protobuf's serialization buffer and the Python ``bytes``). With ``data`` (an open
    file named ``location`` beside the model), every initializer of at least
    :data:`EXTERNAL_THRESHOLD` bytes of ``raw_data`` is written there, page-aligned, and
    referenced from the model. ``extra`` initializers follow the model's own. ``model``
    itself is never modified.
    """
    model_head, model_tail = _split_fields(model, _MODEL_GRAPH)
    graph_head, graph_tail = _split_fields(model.graph, _GRAPH_INITIALIZER)
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
    head, tail = graph_head.SerializeToString(), graph_tail.SerializeToString()
    inits = sum(1 + len(_varint(size)) + size for _, _, size in pieces)
    fh.write(model_head.SerializeToString())
    if model.HasField("graph"):
        fh.write(_varint(_MODEL_GRAPH << 3 | 2) + _varint(len(head) + inits + len(tail)))
        fh.write(head)
        for tensor, stub, size in pieces:
            fh.write(_varint(_GRAPH_INITIALIZER << 3 | 2) + _varint(size))
            fh.write((stub or tensor).SerializeToString())
        fh.write(tail)
    fh.write(model_tail.SerializeToString())


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


def record(model: ModelProto, key: str, value: Any) -> None:
    """Set the provenance key ``nabn.<key>`` to ``value`` (JSON) in ``metadata_props``."""
    from .. import __version__

    _set_meta(model, _METADATA_PREFIX + "version", __version__)
    _set_meta(model, _METADATA_PREFIX + key, json.dumps(value, sort_keys=True))


def read_record(model: ModelProto, key: str, default: Any = None) -> Any:
    """Return the JSON value stored under ``nabn.<key>``, or ``default``."""
    for prop in model.metadata_props:
        if prop.key == _METADATA_PREFIX + key:
            try:
                return json.loads(prop.value)
            except json.JSONDecodeError:
                return default
    return default


def _set_meta(model: ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    entry = model.metadata_props.add()
    entry.key = key
    entry.value = value


def initializer_map(model: ModelProto) -> Dict[str, TensorProto]:
    """Name -> initializer of the main graph."""
    return {t.name: t for t in model.graph.initializer}


def set_initializer(model: ModelProto, name: str, array: np.ndarray) -> None:
    """Replace (or add) the initializer ``name`` with ``array``, keeping its position."""
    new = numpy_helper.from_array(np.ascontiguousarray(array), name)
    for tensor in model.graph.initializer:
        if tensor.name == name:
            tensor.CopyFrom(new)
            return
    model.graph.initializer.append(new)


def _sync(fh) -> None:
    """Flush ``fh`` to the disk, so that a rename after it never exposes an empty file after a power loss."""
    fh.flush()
    os.fsync(fh.fileno())


def _sync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (POSIX: fsync the directory; elsewhere a no-op)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory; the data itself is synced
        pass
    finally:
        os.close(fd)


def file_mode() -> int:
    """The mode a new file gets under the current umask (``mkstemp`` would give 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Union[str, os.PathLike], write) -> Path:
    """Write a file atomically: ``write(temporary path)`` in the same folder, fsync, rename, fsync the folder.

    The file gets the umask's mode, like any file the user creates.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ModelError(f"output folder does not exist: {folder}")
    fd, tmp = tempfile.mkstemp(prefix=".nabn-", suffix=path.suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            _sync(fh)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
        _sync_folder(folder)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: Union[str, os.PathLike], text: str) -> Path:
    """Write a text file atomically (see :func:`atomic_write_bytes`)."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write(text)

    return atomic_write_bytes(path, write)


def check_output_folder(path: Union[str, os.PathLike]) -> None:
    """Fail before the work, not after it, when an output cannot be written there.

    Raises:
        ModelError: the folder does not exist or the path is a folder.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ModelError(f"output folder does not exist: {folder}")
    if path.is_dir():
        raise ModelError(f"output path is a folder: {path}")


def check_output(
    model: ModelLike, output: Union[str, os.PathLike], inputs: Optional[Mapping[str, object]] = None
) -> None:
    """Refuse an output that would overwrite the input model, the file holding its weights, or another input.

    Args:
        model: the input (a path is checked; an in-memory model has no file to protect).
        output: the model file about to be written (its ``.data`` side file is checked too).
        inputs: the call's other inputs by what they are (``{"the reference model": path}``);
            paths are checked, anything else (arrays, readers, ``ModelProto``) is passed over.

    Raises:
        ModelError: ``output`` is an input, an input's external-data file, or cannot be written.
    """
    output = Path(output)
    check_output_folder(output)
    check_paths({"the input model": model, **(inputs or {})}, {"the output model": output})


def check_paths(inputs: Mapping[str, object], outputs: Mapping[str, object]) -> None:
    """Refuse any output path that names an input file or another output, before any work is done.

    Paths are compared as files: ``os.path.samefile`` where both exist (links and hard links
    included), their resolved paths otherwise. A model's external-data files count as inputs,
    and a model output's ``.data`` side file as an output.

    Args:
        inputs: what each input is (``"the input model"``, ``"--data"``) -> its path; entries
            that are not paths (None, arrays, readers, in-memory models) are passed over.
        outputs: what each output is (``"--report"``) -> the path it will be written to.

    Raises:
        ModelError: an output would overwrite an input, or two outputs are one file.
    """
    named_inputs: List[Tuple[str, Path]] = []
    for label, value in inputs.items():
        if isinstance(value, (str, os.PathLike)):
            path = Path(value)
            named_inputs.append((label, path))
            if path.suffix == ".onnx" and path.is_file():
                named_inputs += [(f"the weights file of {label}", f) for f in sorted(_external_files(path))]
    named_outputs: List[Tuple[str, Path]] = []
    for label, value in outputs.items():
        if isinstance(value, (str, os.PathLike)):
            path = Path(value)
            named_outputs.append((label, path))
            if path.suffix == ".onnx":
                named_outputs.append((f"the weights file of {label}", path.with_name(path.name + ".data")))
    for out_label, out in named_outputs:
        for in_label, given in named_inputs:
            if _same_file(out, given):
                raise ModelError(f"refusing to overwrite {in_label} {given} with {out_label}; choose another path")
    for i, (a_label, a) in enumerate(named_outputs):
        for b_label, b in named_outputs[i + 1 :]:
            if _same_file(a, b):
                raise ModelError(f"{a_label} and {b_label} are the same file {a}; choose different paths")


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (a folder never matches: outputs are files)."""
    if a.is_dir() or b.is_dir():
        return False
    if a.exists() and b.exists():
        try:
            return os.path.samefile(a, b)
        except OSError:  # unreadable or vanished: fall back to the names
            pass
    return os.path.realpath(a) == os.path.realpath(b)


def _external_files(model: Path) -> set:
    """The files the model's external data lives in (empty when it cannot be read: loading will say why)."""
    try:
        proto = onnx.load_model(str(model), load_external_data=False)
        tensors = [
            t
            for t in external_data_helper._get_all_tensors(proto)  # onnx's own walker
            if external_data_helper.uses_external_data(t)
        ]
        return {(model.parent / external_data_helper.ExternalDataInfo(t).location).resolve() for t in tensors}
    except Exception:  # a broken model is reported by load_model, with its own message
        return set()
