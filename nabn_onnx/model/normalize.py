"""The normalizing rewrites: one kind of weight for every pass (Constant nodes and Identity renames removed).

Both are in-place rewrites of a ``ModelProto`` that :func:`nabn_onnx.model.load_model`
applies on load; :mod:`nabn_onnx.passes.normalize` wraps them as passes for models that
did not come through ``load_model`` (plain ``onnx.load``). They live here, not in
``passes/``, because the model layer must not import the passes.
"""

from __future__ import annotations

import heapq
import logging
from typing import Dict, List, Set

import onnx
from onnx import ModelProto, TensorProto

from .traversal import subgraphs

__all__ = ["sort_nodes", "lift_constant_weights", "bypass_initializer_identities"]

logger = logging.getLogger(__name__)


def sort_nodes(model: ModelProto) -> int:
    """Put the main graph's nodes in an order where each comes after what it reads, in place.

    ONNX asks for topologically sorted nodes and onnx's checker refuses a graph that is not;
    onnxruntime sorts on load and runs it. onnxruntime's own float16 converter
    (``onnxruntime.transformers.float16.convert_float_to_float16(..., keep_io_types=True)``)
    appends the input casts at the end of the graph, so such a model ran everywhere but here.
    The sort is stable (a node moves only to come after a producer it reads) and a graph
    already in order is left untouched. A node's inputs include the outer names its
    subgraphs read. A cycle is left for the checker to report.

    Returns:
        How many nodes changed place (0 when the graph was already in order).
    """
    graph = model.graph
    nodes = list(graph.node)
    producer: Dict[str, int] = {}
    for index, node in enumerate(nodes):
        for name in node.output:
            if name:
                producer.setdefault(name, index)
    needs: List[Set[int]] = []
    in_order = True
    for index, node in enumerate(nodes):
        names = set(node.input)
        for sub in _bodies(node):
            names.update(name for inner in sub.node for name in inner.input)
        found = {producer[n] for n in names if n in producer and producer[n] != index}
        in_order = in_order and all(other < index for other in found)
        needs.append(found)
    if in_order:
        return 0
    readers: List[List[int]] = [[] for _ in nodes]
    waiting = [len(found) for found in needs]
    for index, found in enumerate(needs):
        for other in found:
            readers[other].append(index)
    ready = [index for index, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: List[int] = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for reader in readers[index]:
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, reader)
    if len(order) < len(nodes):  # a cycle: nothing to sort it into
        return 0
    moved = sum(1 for place, index in enumerate(order) if place != index)
    del graph.node[:]
    graph.node.extend(nodes[index] for index in order)
    logger.debug("sorted the graph's nodes topologically (%d moved)", moved)
    return moved


def _bodies(node: onnx.NodeProto) -> List[onnx.GraphProto]:
    """The graphs held by ``node``'s attributes and every graph nested in them."""
    found: List[onnx.GraphProto] = []
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for graph in graphs:
            found.append(graph)
            found.extend(subgraphs(graph))
    return found


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
