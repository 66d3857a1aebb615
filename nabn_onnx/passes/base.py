"""The pass framework: a pass is a small class; calling it returns a :class:`PassResult`.

Parameters go in ``__init__``; ``__call__(model)`` keeps no state between calls. Every
pass in this package works in place on the ``ModelProto`` it is given (copying a model
of hundreds of megabytes per pass would dominate the run time); the base checks that the
returned model is the one passed in, and callers that must keep the input copy it once.

A pass also takes an ``onnx_graphsurgeon.Graph``: the base exports it to a ``ModelProto``,
runs the pass on that, and returns the result as a new graph (:mod:`nabn_onnx.model.gsgraph`,
provenance kept); the graph passed in is left as it was.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Union

from onnx import ModelProto

from ..model import GsGraph, from_model, is_gs_graph, restore_model_fields, to_model

__all__ = ["Pass", "PassResult", "PreconditionError", "PostconditionError", "Sequential"]


class PreconditionError(Exception):
    """A pass was given a model it cannot work on (a bug in the caller, not the user's input).

    Like onnx-ir's ``PreconditionError``: raised by :meth:`Pass.requires`.
    """


class PostconditionError(Exception):
    """A pass left the model in a state it promised not to (a bug in the pass): raised by :meth:`Pass.ensures`."""


@dataclass
class PassResult:
    """What a pass did.

    Attributes:
        model: the transformed model (the same object that was passed in; for an
            ``onnx_graphsurgeon.Graph``, a new graph).
        modified: whether anything changed; a second run of a pass returns False.
        details: what changed, for reports and provenance (pass-specific keys).
    """

    model: Union[ModelProto, GsGraph]
    modified: bool
    details: Dict[str, Any] = field(default_factory=dict)


class Pass(abc.ABC):
    """Base of every graph pass."""

    #: Every pass edits the model it is given; see the module docstring.
    in_place: bool = True

    def __call__(self, model: Union[ModelProto, GsGraph]) -> PassResult:
        """Run the pass with its precondition and postcondition checks (see :meth:`call`).

        An ``onnx_graphsurgeon.Graph`` is exported, transformed and imported again: the
        result's ``model`` is a new graph and the one given is not modified.
        """
        if is_gs_graph(model):
            result = self(to_model(model))
            return dataclasses.replace(result, model=from_model(result.model, like=model))
        if not isinstance(model, ModelProto):
            raise PreconditionError(
                f"{type(self).__name__} takes an onnx.ModelProto or onnx_graphsurgeon.Graph, got {type(model).__name__}"
            )
        restore_model_fields(model)  # records a graphsurgeon export carried in the doc_string
        self.requires(model)
        result = self.call(model)
        if self.in_place and result.model is not model:
            raise PostconditionError(f"{type(self).__name__} claims to work in place but returned a new model")
        if not self.in_place and result.model is model and result.modified:
            raise PostconditionError(f"{type(self).__name__} claims to copy but modified its input")
        self.ensures(result.model)
        return result

    def requires(self, model: ModelProto) -> None:
        """Check what the pass needs of ``model`` before it runs; raise :class:`PreconditionError`."""

    def ensures(self, model: ModelProto) -> None:
        """Check what the pass promises of its result; raise :class:`PostconditionError`."""

    @abc.abstractmethod
    def call(self, model: ModelProto) -> PassResult:
        """Transform ``model``; implemented by each pass."""


class Sequential(Pass):
    """Run passes in order on one model, as onnx-ir's ``Sequential``.

    Each pass gets the model the one before returned. The result is ``modified`` when any
    pass modified the model; ``details["results"]`` holds each pass's :class:`PassResult`.
    The sequence works in place when all its passes do.

    Args:
        *passes: the passes, in the order they run.
    """

    def __init__(self, *passes: Pass):
        if not passes:
            raise ValueError("Sequential needs at least one pass")
        self.passes = passes
        self.in_place = all(p.in_place for p in passes)

    def call(self, model: ModelProto) -> PassResult:
        """Run every pass in order; ``modified`` if any of them modified the model."""
        results: List[PassResult] = []
        current: Union[ModelProto, GsGraph] = model
        for step in self.passes:
            result = step(current)
            results.append(result)
            current = result.model
        return PassResult(current, any(r.modified for r in results), {"results": results})
