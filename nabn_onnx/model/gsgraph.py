"""onnx-graphsurgeon graphs in and out of the public calls.

A TensorRT deployment pipeline holds its model as an ``onnx_graphsurgeon.Graph``. Every
public call takes one where it takes a path or a ``ModelProto`` and gives back the kind it
was given: :func:`to_model` converts a graph on the way in (``gs.export_onnx``),
:func:`from_model` converts the result on the way out (``gs.import_onnx``), and
:func:`returns_like` wraps a call so its result comes back as a graph when its model was one.

**Provenance.** A ``gs.Graph`` has no ``metadata_props``, where the ``nabn.*`` records live
(``nabn.inject`` is what stops a second, compounding noise draw), and onnx-graphsurgeon 0.6.1
keeps of a ``ModelProto`` only the graph, ``ir_version``, the opset imports, functions and
the producer (``Graph.copy`` drops even the producer). What it carries through everything it
does (``import_onnx``, ``export_onnx``, ``Graph.copy``, ``cleanup``, ``toposort``) is the
graph's ``name`` and ``doc_string``. So :func:`from_model` appends to the graph's
``doc_string`` one line holding, as JSON, the model fields the graph has no place for
(``metadata_props``, the model's ``doc_string``, ``model_version``, ``domain``, the
producer, the graph's own ``metadata_props``), and :func:`to_model`,
:func:`nabn_onnx.model.load_model` and every pass (:func:`restore_model_fields`) move them
back, leaving the ``doc_string`` as it was. A graph we return and the user saves with ``gs.export_onnx`` thus
still carries its records in the file, and a model made noisy by ``inject`` is still refused a
second draw.

onnx-graphsurgeon is an optional extra (``pip install 'nabn-onnx[graphsurgeon]'``): it is
imported only when a graph is handed in, which means the caller has imported it already.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar, Union

from onnx import ModelProto

from ..errors import ModelError

__all__ = ["GsGraph", "is_gs_graph", "to_model", "from_model", "returns_like", "restore_model_fields", "MARKER"]

#: An ``onnx_graphsurgeon.Graph``. onnx-graphsurgeon publishes no type information (no
#: ``py.typed``) and is optional, so to type checkers it is ``Any``, as it would be imported.
GsGraph = Any

#: Starts the ``doc_string`` line that carries the model fields a ``gs.Graph`` cannot hold.
MARKER = "[nabn-onnx: ModelProto fields kept for onnx-graphsurgeon; do not edit] "

_F = TypeVar("_F", bound=Callable[..., Any])


def is_gs_graph(model: Any) -> bool:
    """Whether ``model`` is an ``onnx_graphsurgeon.Graph`` (never imports onnx-graphsurgeon).

    An object can only be a graph if onnx-graphsurgeon is imported already, so the check
    looks in ``sys.modules`` and costs nothing to callers who do not use it.
    """
    gs = sys.modules.get("onnx_graphsurgeon")
    return gs is not None and isinstance(model, gs.Graph)


def _gs() -> Any:
    try:
        import onnx_graphsurgeon
    except ImportError:  # only reached by from_model(like=<graph>), so it is imported already
        raise ModelError("onnx-graphsurgeon is not installed: pip install 'nabn-onnx[graphsurgeon]'") from None
    return onnx_graphsurgeon


def to_model(graph: GsGraph) -> ModelProto:
    """The ``ModelProto`` of an onnx-graphsurgeon graph, with the fields :func:`from_model` kept.

    The model is what ``gs.export_onnx`` gives (byte for byte, tested), written with one
    copy of the weights instead of two (see :func:`_export`); the graph is not modified.
    ``ir_version``, the opset imports, functions and the producer come from the graph, the
    ``nabn.*`` records and the other model fields from its ``doc_string`` line.

    Raises:
        ModelError: onnx-graphsurgeon cannot export the graph (e.g. an input without a dtype).
    """
    gs = _gs()
    try:
        proto = _export(graph)
    except gs.OnnxGraphSurgeonException as exc:
        raise ModelError(f"cannot export the onnx-graphsurgeon graph: {str(exc).strip().splitlines()[0]}") from None
    restore_model_fields(proto)
    return proto


def _export(graph: GsGraph) -> ModelProto:
    """``gs.export_onnx(graph)``, building the main graph inside the model.

    ``gs.export_onnx`` copies every weight into a ``GraphProto`` (``make_graph``) and that
    graph into the model (``make_model``): a transient peak of twice the weights. The same
    exporter calls for each node, value and tensor, written straight into ``model.graph``,
    copy the weights once (``tools/bench_graphsurgeon.py`` measures both).
    """
    import onnx
    from onnx_graphsurgeon.exporters.onnx_exporter import (
        OnnxExporter,
        check_duplicate_node_names,
        update_import_domains,
    )
    from onnx_graphsurgeon.ir.tensor import Constant, SparseValues, Variable
    from onnx_graphsurgeon.logger import G_LOGGER

    check_duplicate_node_names(graph.nodes, level=G_LOGGER.WARNING)  # graphsurgeon's own warning, as it gives it
    functions = [OnnxExporter.export_function(func) for func in graph.functions]
    model = onnx.helper.make_model(onnx.GraphProto(), opset_imports=update_import_domains(graph), functions=functions)
    out = model.graph
    out.node.extend(OnnxExporter.export_node(node) for node in graph.nodes)
    out.name = graph.name
    out.input.extend(OnnxExporter.export_value_info_proto(t, do_type_check=True) for t in graph.inputs)
    out.output.extend(OnnxExporter.export_value_info_proto(t, do_type_check=True) for t in graph.outputs)
    tensors = graph.tensors()
    for tensor in tensors.values():
        if isinstance(tensor, Constant):
            if isinstance(tensor._values, SparseValues):
                out.sparse_initializer.append(OnnxExporter.export_sparse_tensor_proto(tensor))
            else:
                out.initializer.append(OnnxExporter.export_tensor_proto(tensor))
    for tensor in graph.inputs + graph.outputs:
        tensors.pop(tensor.name, None)
    out.value_info.extend(
        OnnxExporter.export_value_info_proto(t, do_type_check=True)
        for t in tensors.values()
        if isinstance(t, Variable) and (t.dtype is not None or t.shape is not None)
    )
    if graph.doc_string:
        out.doc_string = graph.doc_string
    model.producer_name = graph.producer_name
    model.producer_version = graph.producer_version
    if graph.ir_version is not None:
        model.ir_version = graph.ir_version
    return model


def from_model(proto: ModelProto, like: Any) -> Union[ModelProto, GsGraph]:
    """``proto`` as the kind ``like`` is: an onnx-graphsurgeon graph if ``like`` is one, else ``proto``.

    The graph refers to ``proto``'s tensors (``gs.import_onnx`` loads no values), so the
    caller hands ``proto`` over. Fields the graph cannot hold go into a ``doc_string`` line
    (see the module docstring).
    """
    if not is_gs_graph(like):
        return proto
    restore_model_fields(proto)  # a line left in the model's own doc_string is merged, not nested
    graph = _gs().import_onnx(proto)
    fields = _model_fields(proto)
    if fields:
        doc, _ = _split_fields(graph.doc_string)
        graph.doc_string = (doc + "\n\n" if doc else "") + MARKER + json.dumps(fields, sort_keys=True)
    return graph


def returns_like(arg: str = "model") -> Callable[[_F], _F]:
    """Decorate a call so that, when its ``arg`` is an onnx-graphsurgeon graph, its model comes back as one.

    The call itself takes the graph through :func:`nabn_onnx.model.load_model`; this converts
    what it returns: a ``ModelProto``, or the ``model`` field of a result (``PassResult``,
    ``CalibrationResult``). For paths and ``ModelProto`` the call is unchanged.

    Example::

        calibrate = returns_like("model")(engine.calibrate)
    """

    def decorate(func: _F) -> _F:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind_partial(*args, **kwargs)
            like = bound.arguments.get(arg)
            result = func(*args, **kwargs)
            if not is_gs_graph(like):
                return result
            return _result_like(result, like)

        return wrapper  # type: ignore[return-value]  # same signature, as functools.wraps says

    return decorate


def _result_like(result: Any, like: Any) -> Any:
    if isinstance(result, ModelProto):
        return from_model(result, like)
    model = getattr(result, "model", None)
    if not isinstance(model, ModelProto):
        return result
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.replace(result, model=from_model(model, like))
    result.model = from_model(model, like)
    return result


# --------------------------------------------------------------------------- the doc_string line


def _model_fields(proto: ModelProto) -> Dict[str, Any]:
    """The fields of ``proto`` a gs.Graph drops, without empty ones (order of metadata kept)."""
    fields: Dict[str, Any] = {}
    if proto.metadata_props:
        fields["metadata_props"] = [[p.key, p.value] for p in proto.metadata_props]
    graph_props = getattr(proto.graph, "metadata_props", ())  # GraphProto has them from onnx 1.16
    if graph_props:
        fields["graph_metadata_props"] = [[p.key, p.value] for p in graph_props]
    for name in ("doc_string", "model_version", "domain", "producer_name", "producer_version"):
        value = getattr(proto, name)
        if value:
            fields[name] = value
    return fields


def _split_fields(doc: str) -> Tuple[str, Optional[Dict[str, Any]]]:
    """``doc`` without the fields line, and the fields (None when there is no readable line)."""
    start = doc.rfind(MARKER)
    if start < 0:
        return doc, None
    try:
        fields, end = json.JSONDecoder().raw_decode(doc, start + len(MARKER))
    except json.JSONDecodeError:
        return doc, None  # edited by hand beyond recognition: leave the text, keep nothing
    if not _well_formed(fields):
        return doc, None
    head = doc[:start]
    if head.endswith("\n\n"):
        head = head[:-2]
    return head + doc[end:], fields


def _well_formed(fields: Any) -> bool:
    """Whether a decoded line has the shape :func:`_model_fields` writes (a file may hold anything)."""
    if not isinstance(fields, dict):
        return False
    for name in ("metadata_props", "graph_metadata_props"):
        pairs = fields.get(name, [])
        if not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in pairs
        ):
            return False
    strings = ("doc_string", "domain", "producer_name", "producer_version")
    return all(isinstance(fields.get(n, ""), str) for n in strings) and type(fields.get("model_version", 0)) is int


def restore_model_fields(proto: ModelProto) -> bool:
    """Move the fields line of ``proto.graph.doc_string`` back into the model's own fields.

    For a model exported from a graph :func:`from_model` made (by :func:`to_model`, or by the
    user's own ``gs.export_onnx``). Fields the model has already are kept: a metadata key
    present in ``metadata_props`` wins over the line's value.

    Returns:
        Whether a line was found and moved.
    """
    doc, fields = _split_fields(proto.graph.doc_string)
    if fields is None:
        return False
    proto.graph.doc_string = doc
    _add_props(proto.metadata_props, fields.get("metadata_props", ()))
    if "graph_metadata_props" in fields and hasattr(proto.graph, "metadata_props"):
        _add_props(proto.graph.metadata_props, fields["graph_metadata_props"])
    for name in ("doc_string", "model_version", "domain", "producer_name", "producer_version"):
        if name in fields and not getattr(proto, name):
            setattr(proto, name, fields[name])
    return True


def _add_props(props: Any, pairs: List[List[str]]) -> None:
    present = {p.key for p in props}
    for key, value in pairs:
        if key not in present:
            entry = props.add()
            entry.key, entry.value = key, value
