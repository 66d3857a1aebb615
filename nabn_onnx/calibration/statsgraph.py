"""ExposeBatchNormStatsPass: make a model report the batch statistics of its BatchNorms.

The statistics are reduced inside the graph, by onnxruntime's own BatchNormalization
kernel, so no activation ever leaves the session; per batch and per BatchNormalization
only two vectors of length C and a shape come out.

* **train** BatchNorms run in training mode (``training_mode=1``; before opset 14, the
  extra outputs select it) with ``momentum = 0``, so their running-statistic outputs are
  exactly the batch mean and biased batch variance, and they normalize with them, as
  PyTorch's ``train()`` does::

      X --BN(eval)--> Y          X --BN(train, momentum=0)--> Y, mean_b, var_b

* **tap** BatchNorms keep running in eval mode; a dangling training-mode BatchNormalization
  with unit parameters on the same input measures the batch statistics of ``X``::

      X --BN(eval)--> Y          X --BN(train, momentum=0, scale=1, B=0)--> (unused), mean_b, var_b
                                 X --BN(eval, scale read through Where(mean_b > mean_b, scale, scale))--> Y

  The ``Where`` returns ``scale`` exactly; it only makes the eval BatchNorm wait for the
  tap, so onnxruntime frees ``X`` right after both instead of at the end of the run.

With ``shapes=True``, ``Shape(X)`` of each measured BatchNorm is exposed too, for the
element count per channel; callers that know the spatial sizes statically leave it off
(a ``Shape`` on a blocked-layout tensor costs onnxruntime a layout conversion). The
BatchNorm waits for it the same way (``Where(Shape(X)[0] > Shape(X)[0], scale, scale)``).

A tapped BatchNorm that is an exact identity (``split``'s placeholder) is measured on its
output ``Y`` instead, which equals ``X`` bit for bit (when no ``Shape`` is exposed): the
eval BatchNorm then has one reader, the Conv before it, and onnxruntime folds it away (on
MobileNet-v2 at batch 64 the tap graph ran about twice as fast).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Sequence, Tuple

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper

from ..model import default_opset
from ..passes import is_placeholder
from ..passes.base import Pass, PassResult, PreconditionError
from ..passes.write_stats import bn_epsilon, bn_params

__all__ = ["ExposeBatchNormStatsPass", "StatOutputs"]


@dataclass(frozen=True)
class StatOutputs:
    """Names of the graph outputs that carry one BatchNorm's batch statistics."""

    mean: str
    var: str
    shape: str


def _set_attr(node, name: str, value) -> None:
    for attr in node.attribute:
        if attr.name == name:
            node.attribute.remove(attr)
            break
    node.attribute.append(helper.make_attribute(name, value))


def _value_info(name: str, elem_type: int):
    return helper.make_tensor_value_info(name, elem_type, None)


class ExposeBatchNormStatsPass(Pass):
    """Expose per-batch statistics of BatchNormalization inputs as graph outputs.

    Args:
        train: names of BatchNorms to switch to training mode (measured).
        tap: names of BatchNorms to measure while they stay in eval mode.
        keep_outputs: keep the model's own outputs (False drops them: onnxruntime then skips
            whatever only the outputs need, such as a classifier after the last BatchNorm).
        shapes: also expose ``Shape(X)`` of each measured BatchNorm input.

    The result's ``details["outputs"]`` maps each measured BatchNorm to its :class:`StatOutputs`
    (the pass keeps no state between calls).
    """

    def __init__(
        self, train: Iterable[str] = (), tap: Iterable[str] = (), keep_outputs: bool = True, shapes: bool = True
    ):
        self.shapes = shapes
        self.train = set(train)
        self.tap = set(tap)
        self.keep_outputs = keep_outputs
        overlap = self.train & self.tap
        if overlap:
            raise ValueError(f"BatchNorms cannot be both trained and tapped: {sorted(overlap)}")

    def requires(self, model: ModelProto) -> None:
        """Every BatchNorm named in ``train`` or ``tap`` must exist."""
        names = {n.name for n in model.graph.node if n.op_type == "BatchNormalization"}
        missing = (self.train | self.tap) - names
        if missing:
            raise PreconditionError(f"no BatchNormalization named {sorted(missing)}")

    def call(self, model: ModelProto) -> PassResult:
        """Expose the statistics graph outputs (see the module docstring)."""
        opset = default_opset(model)
        graph = model.graph
        inits = {t.name: t for t in graph.initializer}
        outputs: Dict[str, StatOutputs] = {}
        new_outputs: List = []
        new_nodes: Dict[int, List] = {}
        pre_nodes: Dict[int, List] = {}
        found = set()
        for position, node in enumerate(graph.node):
            if node.op_type != "BatchNormalization" or node.name not in (self.train | self.tap):
                continue
            found.add(node.name)
            base = node.name
            stat = StatOutputs(f"{base}/nabn_mean", f"{base}/nabn_var", f"{base}/nabn_shape")
            elem_type = inits[node.input[1]].data_type if node.input[1] in inits else 1
            before: List = []
            if elem_type not in (TensorProto.FLOAT, TensorProto.DOUBLE):
                before, after = self._widen(node, elem_type, inits, graph)
                new_nodes.setdefault(position, []).extend(after)
                elem_type = TensorProto.FLOAT
            waits: List[str] = []  # boolean tensors computed from outputs the BatchNorm must wait for
            if self.shapes:
                before.append(helper.make_node("Shape", [node.input[0]], [stat.shape], name=f"{base}/nabn_shape_op"))
                if opset >= 9:  # Greater on integers
                    waits.append(self._shape_known(base, stat, before, graph))
            if node.name in self.train:
                self._to_training(node, stat, opset)
            elif is_placeholder(bn_params(node, inits), bn_epsilon(node)) and not waits:
                # its output is its input: measured there, the BatchNorm keeps the Conv as its only
                # reader and onnxruntime folds it away (a Where on its scale would stop that)
                new_nodes.setdefault(position, []).append(
                    self._tap(node, stat, opset, inits, graph, source=node.output[0])
                )
            else:
                before.append(self._tap(node, stat, opset, inits, graph))
                before.append(
                    helper.make_node(
                        "Greater", [stat.mean, stat.mean], [f"{base}/nabn_tap_ran"], name=f"{base}/nabn_tap_ran"
                    )
                )
                waits.append(f"{base}/nabn_tap_ran")
            if opset >= 9:  # Where
                before.extend(self._wait_for(node, waits))
            pre_nodes[position] = before
            outputs[node.name] = stat
            new_outputs += [_value_info(stat.mean, elem_type), _value_info(stat.var, elem_type)]
            if self.shapes:
                new_outputs.append(_value_info(stat.shape, 7))
        missing = (self.train | self.tap) - found
        if missing:
            raise ValueError(f"no BatchNormalization named {sorted(missing)}")
        ordered = []
        for position, node in enumerate(graph.node):
            ordered.extend(pre_nodes.get(position, []))
            ordered.append(node)
            ordered.extend(new_nodes.get(position, []))
        del graph.node[:]
        graph.node.extend(ordered)
        if not self.keep_outputs:
            del graph.output[:]
        graph.output.extend(new_outputs)
        return PassResult(model, bool(outputs), {"outputs": outputs})

    @staticmethod
    def _widen(node, elem_type: int, inits, graph) -> Tuple[List, List]:
        """Run a float16/bfloat16 BatchNorm in float32: ``Cast -> BN(float32 copies) -> Cast back``.

        onnxruntime's half-precision kernel accumulates the batch variance in half precision,
        which overflows (inf, then NaN statistics) on activations of a few hundred; in float32
        the statistics are those of the same values, and the output is cast back to the
        model's type, so what follows runs as before.
        """
        base = node.name
        wide_x, wide_y = f"{base}/nabn_x32", f"{base}/nabn_y32"
        cast_in = helper.make_node("Cast", [node.input[0]], [wide_x], name=f"{base}/nabn_cast_in", to=TensorProto.FLOAT)
        cast_out = helper.make_node("Cast", [wide_y], [node.output[0]], name=f"{base}/nabn_cast_out", to=elem_type)
        for slot in range(1, 5):
            name = node.input[slot]
            if name in inits:
                wide = f"{base}/nabn_param{slot}_32"
                graph.initializer.append(
                    numpy_helper.from_array(numpy_helper.to_array(inits[name]).astype(np.float32), wide)
                )
                inits[wide] = graph.initializer[-1]
                node.input[slot] = wide
        node.input[0] = wide_x
        node.output[0] = wide_y
        return [cast_in], [cast_out]

    @staticmethod
    def _to_training(node, stat: StatOutputs, opset: int) -> None:
        _set_attr(node, "momentum", 0.0)
        del node.output[1:]
        if opset >= 14:
            _set_attr(node, "training_mode", 1)
            node.output.extend([stat.mean, stat.var])
        else:  # opsets 9-13: asking for the running outputs selects training mode
            node.output.extend([stat.mean, stat.var, f"{node.name}/nabn_saved_mean", f"{node.name}/nabn_saved_var"])

    @staticmethod
    def _tap(node, stat: StatOutputs, opset: int, inits, graph, source: str = ""):
        """A dangling training-mode BatchNorm measuring ``source`` (``node``'s input by default)."""
        scale = inits.get(node.input[1])
        channels = int(scale.dims[0])
        dtype = helper.tensor_dtype_to_np_dtype(scale.data_type)
        names = [f"{node.name}/nabn_tap_{p}" for p in ("one", "zero")]
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.ones(channels, dtype), names[0]),
                numpy_helper.from_array(np.zeros(channels, dtype), names[1]),
            ]
        )
        outputs = [f"{node.name}/nabn_tap_y", stat.mean, stat.var]
        attrs: Dict[str, Any] = {"momentum": 0.0, "epsilon": 1e-5}  # ONNX attributes: any type
        if opset >= 14:
            attrs["training_mode"] = 1
        else:
            outputs += [f"{node.name}/nabn_tap_saved_mean", f"{node.name}/nabn_tap_saved_var"]
        return helper.make_node(
            "BatchNormalization",
            [source or node.input[0], names[0], names[1], names[1], names[0]],
            outputs,
            name=f"{node.name}/nabn_tap",
            **attrs,
        )

    @staticmethod
    def _shape_known(base: str, stat: StatOutputs, nodes: List, graph) -> str:
        """Append ``Greater(n, n)`` with ``n = Shape(X)[0]`` to ``nodes``; returns its (scalar boolean) name."""
        index, first, known = f"{base}/nabn_shape_index", f"{base}/nabn_shape_n", f"{base}/nabn_shape_known"
        graph.initializer.append(numpy_helper.from_array(np.array(0, np.int64), index))
        nodes.append(helper.make_node("Gather", [stat.shape, index], [first], name=f"{base}/nabn_shape_first"))
        nodes.append(helper.make_node("Greater", [first, first], [known], name=known))
        return known

    @staticmethod
    def _wait_for(node, waits: Sequence[str]) -> List:
        """Make ``node`` read its scale through ``Where(any of waits, scale, scale)``, which is ``scale`` exactly.

        onnxruntime runs a node that nothing on the way to the graph's outputs reads (a tap, a
        ``Shape`` exposed as an output) after the whole main path, so each measured input would
        stay alive until the end of the run: on MobileNet-v2 at batch 64 the tapped graph peaked
        at 5.3 GB against 1.6 GB in training mode, and on a ResNet-50 whose spatial size is
        symbolic (so ``Shape`` is exposed) the training-mode graph at 3.6 GB against 1.1 GB.
        Reading the scale through a ``Where`` of their results makes the BatchNorm wait for
        them, so the input is freed as soon as all are done. The condition's value never
        matters: both branches are the scale (NaN included).
        """
        if not waits:
            return []
        nodes, cond = [], waits[0]
        for i, other in enumerate(waits[1:]):
            both = f"{node.name}/nabn_wait_{i}"
            nodes.append(helper.make_node("And", [cond, other], [both], name=both))
            cond = both
        scale_after = f"{node.name}/nabn_scale_after"
        nodes.append(helper.make_node("Where", [cond, node.input[1], node.input[1]], [scale_after], name=scale_after))
        node.input[1] = scale_after
        return nodes
