"""Initializer and opset helpers: sizes, replacing one initializer, copies of a model without its large weights."""

from __future__ import annotations

from typing import Any, Collection, List, Tuple, Union

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, numpy_helper

from ..errors import ModelError

__all__ = [
    "default_opset",
    "model_size_bytes",
    "set_initializer",
    "weightless_copy",
    "without_large_initializers",
    "copy_fields",
    "set_field",
]


def default_opset(model: ModelProto) -> int:
    """The version of the default ONNX domain the model imports.

    Raises:
        ModelError: the model imports no version of the default domain.
    """
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise ModelError("the model imports no version of the default ONNX domain (opset_import is empty)")


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


def set_initializer(model: ModelProto, name: str, array: np.ndarray) -> None:
    """Replace (or add) the initializer ``name`` with ``array``, keeping its position."""
    new = numpy_helper.from_array(np.ascontiguousarray(array), name)
    for tensor in model.graph.initializer:
        if tensor.name == name:
            tensor.CopyFrom(new)
            return
    model.graph.initializer.append(new)


#: Initializers up to this many elements stay in the checker's copy (shape inference reads shape constants).
_CHECK_KEEP_ELEMENTS = 1024


def weightless_copy(model: ModelProto) -> ModelProto:
    """A copy of ``model`` without its weights' data or its free text, for the checker and for shape inference.

    Large initializers become graph inputs of the same type and shape; initializers of up to
    :data:`_CHECK_KEEP_ELEMENTS` elements stay (shape inference reads shape constants) unless
    they are strings of more than :data:`_CHECK_KEEP_TEXT` bytes. The doc strings of the
    model, its graph and the graph's nodes are left out, and ``metadata_props`` keep their
    keys (the checker refuses duplicates) with empty values: neither the checker nor shape
    inference reads them.

    onnx's checker serializes the model it is given and parses it again in C++, two extra
    copies of everything in it; the weights' own consistency is checked by
    :func:`nabn_onnx.model.load_model`'s size checks instead. This also lets models above 2 GB be checked.
    """
    light = ModelProto()
    copy_fields(model, light, skip=("graph", "doc_string", "metadata_props"))
    for prop in model.metadata_props:
        light.metadata_props.add(key=prop.key)
    graph = model.graph
    copy_fields(graph, light.graph, skip=("initializer", "doc_string", "node"))
    for node in graph.node:
        copy_fields(node, light.graph.node.add(), skip="doc_string")
    listed = {i.name for i in graph.input}
    for tensor in graph.initializer:
        numel = 1
        for d in tensor.dims:
            numel *= d
        if numel <= _CHECK_KEEP_ELEMENTS and _text_bytes(tensor) <= _CHECK_KEEP_TEXT:
            light.graph.initializer.append(tensor)
        elif tensor.name not in listed:
            light.graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
            )
    return light


#: String initializers above this many bytes leave the checker's copy, whatever their element count.
_CHECK_KEEP_TEXT = 1 << 16


def _text_bytes(tensor: TensorProto) -> int:
    """Bytes of a string tensor's elements (0 for other types), read one element at a time."""
    return sum(len(s) for s in tensor.string_data) if tensor.data_type == TensorProto.STRING else 0


def copy_fields(src: Any, dst: Any, skip: Union[str, Collection[str]]) -> None:
    """Copy every set field of the protobuf message ``src`` into ``dst`` except the fields named in ``skip``.

    Args:
        src: the message to copy from.
        dst: a message of the same type to copy into.
        skip: the name of the field left out (``"graph"``, ``"initializer"``), or several names.
    """
    skipped = {skip} if isinstance(skip, str) else set(skip)
    for field, value in src.ListFields():
        if field.name not in skipped:
            set_field(dst, field, value)


def set_field(dst: Any, field: Any, value: Any) -> None:
    """Set one field on the protobuf message ``dst``.

    Args:
        dst: the message to set the field on.
        field: the field's descriptor, as ``ListFields`` yields it.
        value: its value, as ``ListFields`` yields it (repeated fields are extended).
    """
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
    copy_fields(model, light, skip="graph")
    copy_fields(model.graph, light.graph, skip="initializer")
    large = []
    for tensor in model.graph.initializer:
        if tensor.ByteSize() >= min_bytes:
            large.append(tensor)
        else:
            light.graph.initializer.append(tensor)
    return light, large
