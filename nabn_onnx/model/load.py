"""Loading a model, ready for the passes, and refusing a hostile or broken one.

:func:`load_model` reads a model (with its external data, each tensor's claim on it checked
first: :mod:`nabn_onnx.model.external`), lifts weights stored as ``Constant`` nodes into
initializers and bypasses Identity renames of them (:mod:`nabn_onnx.model.normalize`),
runs onnx's checker (:func:`check_model`) and refuses what would fail later, far from the
load: text that is not UTF-8 or larger than :data:`MAX_TEXT_BYTES`, BatchNorms in training
mode, initializers whose data does not match their dims.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError
from onnx import ModelProto, TensorProto, external_data_helper

from ..errors import ModelError
from .external import external_tensors, load_external_data
from .gsgraph import GsGraph, is_gs_graph, restore_model_fields, to_model
from .initializers import default_opset, weightless_copy
from .normalize import bypass_initializer_identities, lift_constant_weights, sort_nodes
from .traversal import all_nodes

__all__ = ["ModelLike", "MIN_OPSET", "MAX_TEXT_BYTES", "MAX_TOTAL_TEXT_BYTES", "load_model", "check_model"]


#: A model the public calls take: a path, a ``ModelProto`` or an ``onnx_graphsurgeon.Graph``.
ModelLike = Union[str, os.PathLike, ModelProto, GsGraph]


#: BatchNormalization's signature is stable from opset 9 on (``spatial`` was dropped).
MIN_OPSET = 9


#: The most text one value of a model may hold: a string field (a doc string, a
#: ``metadata_props`` value, a name), one attribute's strings or one string tensor's elements
#: together. Real models hold kilobytes there (a label list, a tokenizer's vocabulary); each
#: step that copies or serializes the model copies such text again, so 300 MB of it cost
#: gigabytes before this limit.
MAX_TEXT_BYTES = 64 << 20

#: The most text a whole model may hold (every value of :data:`MAX_TEXT_BYTES` together).
MAX_TOTAL_TEXT_BYTES = 256 << 20


def load_model(model: ModelLike, *, check: bool = True) -> ModelProto:
    """Load a model from a path (or take a ``ModelProto`` or an onnx-graphsurgeon graph), ready for the passes.

    Args:
        model: path to an ``.onnx`` file, a loaded ``ModelProto`` (used as is, not copied) or
            an ``onnx_graphsurgeon.Graph`` (exported to a new ``ModelProto``, see :mod:`nabn_onnx.model.gsgraph`).
        check: run ``onnx.checker`` on the model.

    Returns:
        The model with external data loaded and ``Constant`` weights lifted into initializers.

    Raises:
        ModelError: the file is missing, not ONNX, fails the checker, points outside its
            folder for external data or claims more of it than its dims need (nothing is
            read then), holds a text value above :data:`MAX_TEXT_BYTES` or more than
            :data:`MAX_TOTAL_TEXT_BYTES` of text, or uses an opset older than :data:`MIN_OPSET`.
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
        if external_tensors(proto):
            load_external_data(proto, path)
    if not proto.HasField("graph"):
        raise ModelError("the model has no graph")
    restore_model_fields(proto)  # saved with gs.export_onnx from a graph nabn-onnx returned
    text = _check_text(proto)
    if text > MAX_TOTAL_TEXT_BYTES:
        raise ModelError(
            f"the model holds {text / 2**20:.0f} MiB of text (names, doc strings, metadata, strings); nabn-onnx "
            f"refuses more than {MAX_TOTAL_TEXT_BYTES >> 20} MiB (a damaged or hostile file?)"
        )
    opset = default_opset(proto)
    if opset < MIN_OPSET:
        raise ModelError(
            f"the model uses opset {opset}; nabn-onnx needs opset {MIN_OPSET} or newer "
            "(convert it with onnx.version_converter.convert_version)"
        )
    _refuse_training_mode(proto)
    sort_nodes(proto)
    lift_constant_weights(proto)
    bypass_initializer_identities(proto)
    if check:
        check_model(proto)
    _check_initializer_sizes(proto)
    return proto


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


def _check_text(message, where: str = "model") -> int:
    """Refuse text that is not valid UTF-8, and text values above :data:`MAX_TEXT_BYTES`; return the text's size.

    Protobuf parses bad UTF-8 anyway and hands it to Python as ``bytes`` (or fails when it
    is read), which would surface far from the load. Only string and bytes fields and
    messages are visited, and tensors' ``raw_data`` (checked against their dims) is never
    read, so weights are not copied; each text value is read once, one at a time. Sizes
    are counted in characters for text (at most its UTF-8 bytes) and in bytes for bytes.
    """
    total = 0
    for field in message.DESCRIPTOR.fields:
        if field.type not in _TEXT_TYPES or (field.type == FieldDescriptor.TYPE_BYTES and field.name == "raw_data"):
            continue
        repeated = field.is_repeated
        if not repeated and not message.HasField(field.name):
            continue
        try:
            value = getattr(message, field.name)
            items = value if repeated else (value,)
            bad = field.type == FieldDescriptor.TYPE_STRING and any(isinstance(v, bytes) for v in items)
        except UnicodeDecodeError:  # some protobuf back ends fail on read instead of returning bytes
            bad = True
        if bad:
            raise ModelError(f"{where}.{field.name} holds text that is not valid UTF-8; the file is corrupt")
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            size = sum(len(v) for v in items)  # characters of a str: at most its UTF-8 bytes
            if size > MAX_TEXT_BYTES:
                raise ModelError(
                    f"{where}{_label(message)}.{field.name} holds {size / 2**20:.0f} MiB of text; nabn-onnx refuses "
                    f"text values above {MAX_TEXT_BYTES >> 20} MiB (a damaged or hostile file?)"
                )
            total += size
            continue
        for index, item in enumerate(items):
            total += _check_text(item, f"{where}.{field.name}[{index}]" if repeated else f"{where}.{field.name}")
    return total


#: The field types :func:`_check_text` reads.
_TEXT_TYPES = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_MESSAGE)


def _label(message) -> str:
    """`` ('<key or name>')`` of a message that has a short key or name, for error messages; else empty."""
    for key in ("key", "name"):
        if key in message.DESCRIPTOR.fields_by_name:
            try:
                value = getattr(message, key)
            except UnicodeDecodeError:
                return ""
            if value and len(value) <= 200:
                return f" ({value!r})"
    return ""


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
