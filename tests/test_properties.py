"""Property tests of the split over layer configurations hypothesis draws.

Models are built in code with seeded weights: 1-3 parallel copies of one analog layer
(Conv or ConvTranspose of rank 1-3 with any kernel, stride, padding, dilation, group
including depthwise, output_padding, bias on or off; Gemm with transA/transB/alpha/beta;
MatMul with a 2-D output), each followed by an activation, summed. For every model:

* the split inserts exactly one BatchNormalization per layer;
* its outputs are bit-exact with onnxruntime's optimizations off (the placeholder is the
  identity in float32), and within ``OPTIMIZED_RTOL`` with ``ORT_ENABLE_ALL``;
* a second split changes nothing (``modified`` False).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from nabn_onnx.passes import SplitBatchNormPass

#: Models tried per property run (about 5-10 s on one core).
MAX_EXAMPLES = 500
#: With every onnxruntime optimization on, fusions may reassociate sums.
OPTIMIZED_RTOL = 1e-5
OPSET = 17


@dataclass(frozen=True)
class Layer:
    """One analog layer configuration."""

    op: str
    rank: int = 2  # spatial rank (Conv/ConvTranspose)
    c_in: int = 2
    c_out: int = 2
    group: int = 1
    kernel: Tuple[int, ...] = (3, 3)
    stride: Tuple[int, ...] = (1, 1)
    pads: Tuple[int, ...] = (0, 0, 0, 0)
    dilation: Tuple[int, ...] = (1, 1)
    output_padding: Optional[Tuple[int, ...]] = None
    bias: bool = True
    size: Tuple[int, ...] = (6, 6)
    trans_a: int = 0
    trans_b: int = 0
    alpha: float = 1.0
    beta: float = 1.0
    batch: int = 3


@st.composite
def conv_layers(draw, op: str) -> Layer:
    rank = draw(st.integers(1, 3))
    depthwise = draw(st.booleans())
    if depthwise:
        c_in = draw(st.integers(1, 4))
        group, c_out = c_in, c_in * draw(st.integers(1, 2))
    else:
        group = draw(st.integers(1, 3))
        c_in, c_out = group * draw(st.integers(1, 2)), group * draw(st.integers(1, 2))
    small = rank == 3  # keep 3-D volumes small
    kernel = tuple(draw(st.integers(1, 2 if small else 3)) for _ in range(rank))
    stride = tuple(draw(st.integers(1, 2 if small else 3)) for _ in range(rank))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(2 * rank))
    output_padding = None
    if op == "ConvTranspose" and draw(st.booleans()):
        output_padding = tuple(draw(st.integers(0, s - 1)) for s in stride)  # onnxruntime: < stride
    size = []
    extra = output_padding or (0,) * rank
    for k, d, p0, p1, s, o in zip(kernel, dilation, pads[:rank], pads[rank:], stride, extra):
        reach = d * (k - 1) + 1
        if op == "Conv":  # (size + p0 + p1 - reach) // s + 1 >= 1
            low = max(1, reach - p0 - p1)
        else:  # s * (size - 1) + o + reach - p0 - p1 >= 1
            low = max(1, 1 + -(-(p0 + p1 + 1 - reach - o) // s))
        size.append(draw(st.integers(low, low + (2 if small else 4))))
    return Layer(
        op,
        rank,
        c_in,
        c_out,
        group,
        kernel,
        stride,
        pads,
        dilation,
        output_padding,
        draw(st.booleans()),
        tuple(size),
        batch=draw(st.integers(1, 3)),
    )


@st.composite
def dense_layers(draw, op: str) -> Layer:
    c_in, c_out = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    if op == "MatMul":
        return Layer(op, c_in=c_in, c_out=c_out, bias=False, batch=draw(st.integers(1, 4)))
    return Layer(
        op,
        c_in=c_in,
        c_out=c_out,
        bias=draw(st.booleans()),
        trans_a=draw(st.integers(0, 1)),
        trans_b=draw(st.integers(0, 1)),
        alpha=draw(st.sampled_from([1.0, 0.5, -2.0])),
        beta=draw(st.sampled_from([1.0, 0.25])),
        batch=draw(st.integers(1, 4)),
    )


layers = st.one_of(conv_layers("Conv"), conv_layers("ConvTranspose"), dense_layers("Gemm"), dense_layers("MatMul"))


def _input_shape(layer: Layer) -> List[int]:
    if layer.op in ("Conv", "ConvTranspose"):
        return [layer.batch, layer.c_in, *layer.size]
    if layer.op == "Gemm" and layer.trans_a:
        return [layer.c_in, layer.batch]
    return [layer.batch, layer.c_in]


def _weight_shape(layer: Layer) -> List[int]:
    if layer.op == "Conv":
        return [layer.c_out, layer.c_in // layer.group, *layer.kernel]
    if layer.op == "ConvTranspose":
        return [layer.c_in, layer.c_out // layer.group, *layer.kernel]
    if layer.op == "Gemm" and layer.trans_b:
        return [layer.c_out, layer.c_in]
    return [layer.c_in, layer.c_out]


def build(layer: Layer, copies: int, activation: str, seed: int) -> onnx.ModelProto:
    """``copies`` parallel layers with their own seeded weights, each activated, summed."""
    rng = np.random.default_rng(seed)
    inits, nodes, outs = [], [], []
    for i in range(copies):
        w, b = f"w{i}", f"b{i}"
        inits.append(numpy_helper.from_array(rng.normal(0, 0.5, _weight_shape(layer)).astype(np.float32), w))
        inputs = ["x", w]
        if layer.bias:
            inits.append(numpy_helper.from_array(rng.normal(0, 0.2, layer.c_out).astype(np.float32), b))
            inputs.append(b)
        attrs = {}
        if layer.op in ("Conv", "ConvTranspose"):
            attrs = dict(
                kernel_shape=list(layer.kernel),
                strides=list(layer.stride),
                pads=list(layer.pads),
                dilations=list(layer.dilation),
                group=layer.group,
            )
            if layer.output_padding is not None:
                attrs["output_padding"] = list(layer.output_padding)
        elif layer.op == "Gemm":
            attrs = dict(transA=layer.trans_a, transB=layer.trans_b, alpha=layer.alpha, beta=layer.beta)
        nodes.append(helper.make_node(layer.op, inputs, [f"y{i}"], name=f"layer{i}", **attrs))
        nodes.append(helper.make_node(activation, [f"y{i}"], [f"a{i}"], name=f"act{i}"))
        outs.append(f"a{i}")
    total = outs[0]
    for i, name in enumerate(outs[1:]):
        nodes.append(helper.make_node("Add", [total, name], [f"sum{i}"], name=f"add{i}"))
        total = f"sum{i}"
    rank = 2 + (layer.rank if layer.op in ("Conv", "ConvTranspose") else 0)
    graph = helper.make_graph(
        nodes,
        "prop",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, _input_shape(layer))],
        [helper.make_tensor_value_info(total, TensorProto.FLOAT, [f"d{i}" for i in range(rank)])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray, optimize: bool) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    layer=layers,
    copies=st.integers(1, 3),
    activation=st.sampled_from(["Relu", "Tanh", "Sigmoid"]),
    seed=st.integers(0, 2**16),
)
def test_split_is_exact_and_idempotent(layer: Layer, copies: int, activation: str, seed: int) -> None:
    model = build(layer, copies, activation, seed)
    x = np.random.default_rng(seed + 1).normal(0, 1, _input_shape(layer)).astype(np.float32)
    before_plain, before_opt = _run(model, x, False), _run(model, x, True)

    result = SplitBatchNormPass()(model)
    assert result.modified
    assert len(result.details["inserted"]) == copies
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == copies
    assert result.details["skipped"] == {}
    onnx.checker.check_model(model, full_check=True)

    after_plain, after_opt = _run(model, x, False), _run(model, x, True)
    assert after_plain.shape == before_plain.shape
    assert np.max(np.abs(after_plain - before_plain)) == 0.0, "split changed the output with optimizations off"
    scale = max(1.0, float(np.max(np.abs(before_opt))))
    assert np.max(np.abs(after_opt - before_opt)) <= OPTIMIZED_RTOL * scale

    again = SplitBatchNormPass()(model)
    assert not again.modified
    assert again.details["inserted"] == []
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == copies


def test_builder_covers_each_family() -> None:
    """The strategies reach every op the property is about (a guard against a vacuous property)."""
    seen = set()

    @settings(max_examples=200, deadline=None, derandomize=True, database=None)
    @given(layer=layers)
    def collect(layer: Layer) -> None:
        key = (layer.op, layer.rank if layer.op.startswith("Conv") else 0)
        seen.add(key)
        if layer.op.startswith("Conv") and layer.group == layer.c_in and layer.group > 1:
            seen.add((layer.op, "depthwise"))
        if layer.output_padding and any(layer.output_padding):
            seen.add(("ConvTranspose", "output_padding"))

    collect()
    want = {
        ("Conv", 1),
        ("Conv", 2),
        ("Conv", 3),
        ("ConvTranspose", 1),
        ("ConvTranspose", 2),
        ("ConvTranspose", 3),
        ("Gemm", 0),
        ("MatMul", 0),
        ("Conv", "depthwise"),
    }
    assert want <= seen, want - seen
