"""Walking a graph and the graphs nested in it (If/Loop/Scan bodies, recursively)."""

from __future__ import annotations

from typing import Iterator

import onnx

__all__ = ["subgraphs", "all_nodes"]


def subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
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


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """The nodes of ``graph`` and of every graph nested in it."""
    yield from graph.node
    for sub in subgraphs(graph):
        yield from sub.node
