"""SplitBatchNormPass: structure and onnxruntime outputs over a grid of layer configurations."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from nabn_onnx import split
from nabn_onnx.model import find_analog_layers, read_record
from nabn_onnx.passes import SplitBatchNormPass

from builders import images, run, small_cnn

#: onnxruntime with graph optimizations may fuse differently before and after: allowed relative error.
OPTIMIZED_RTOL = 1e-5


def _bn_count(model) -> int:
    return sum(n.op_type == "BatchNormalization" for n in model.graph.node)


def _single_layer(
    op: str,
    rank: int = 2,
    group: int = 1,
    bias: bool = True,
    stride: int = 1,
    dilation: int = 1,
    channels_in: int = 4,
    channels_out: int = 6,
    trans_b: int = 0,
    seed: int = 0,
):
    """A model with one analog layer followed by a ReLU, and its input array."""
    rng = np.random.default_rng(seed)
    size = 7
    inits, attrs = [], {}
    if op in ("Conv", "ConvTranspose"):
        k = 3
        spatial = [size] * rank
        x = rng.normal(size=(2, channels_in, *tuple(spatial))).astype(np.float32)
        if op == "Conv":
            w_shape = (channels_out, channels_in // group) + (k,) * rank
        else:
            w_shape = (channels_in, channels_out // group) + (k,) * rank
        attrs = dict(group=group, strides=[stride] * rank, dilations=[dilation] * rank, pads=[1] * (2 * rank))
        inputs = ["x", "w"] + (["b"] if bias else [])
    else:
        x = rng.normal(size=(3, channels_in)).astype(np.float32)
        w_shape = (channels_out, channels_in) if trans_b else (channels_in, channels_out)
        if op == "Gemm":
            attrs = dict(transB=trans_b, alpha=1.0, beta=1.0)
            inputs = ["x", "w"] + (["b"] if bias else [])
        else:
            inputs = ["x", "w"]
    inits.append(numpy_helper.from_array(rng.normal(size=w_shape).astype(np.float32), "w"))
    if "b" in inputs:
        inits.append(numpy_helper.from_array(rng.normal(size=channels_out).astype(np.float32), "b"))
    nodes = [helper.make_node(op, inputs, ["y"], name="layer", **attrs), helper.make_node("Relu", ["y"], ["out"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None] * x.ndim)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, x


CONV_GRID = [
    dict(op=op, rank=rank, group=group, bias=bias, stride=stride, dilation=dilation)
    for op, rank, group, bias, stride, dilation in itertools.product(
        ["Conv", "ConvTranspose"], [1, 2, 3], [1, 2], [True, False], [1, 2], [1, 2]
    )
]
DEPTHWISE = [dict(op="Conv", rank=2, group=4, channels_in=4, channels_out=4, bias=b) for b in (True, False)] + [
    dict(op="Conv", rank=2, group=4, channels_in=4, channels_out=8, stride=2)
]
DENSE = [dict(op="Gemm", trans_b=t, bias=b) for t in (0, 1) for b in (True, False)] + [dict(op="MatMul")]


@pytest.mark.parametrize(
    "config", CONV_GRID + DEPTHWISE + DENSE, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items())
)
def test_split_inserts_one_exact_identity_batchnorm(config):
    model, x = _single_layer(**config)
    before = run(model, {"x": x})[0]
    result = SplitBatchNormPass()(model)
    assert result.modified
    assert len(result.details["inserted"]) == 1
    assert _bn_count(model) == 1
    onnx.checker.check_model(model)
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    channels = find_analog_layers(model)[0].channels
    scale = next(t for t in model.graph.initializer if t.name == bn.input[1])
    assert list(scale.dims) == [channels]
    after = run(model, {"x": x})[0]
    np.testing.assert_array_equal(after, before)  # the placeholder is an exact identity
    optimized = run(model, {"x": x}, optimize=True)[0]
    np.testing.assert_allclose(optimized, before, rtol=OPTIMIZED_RTOL, atol=OPTIMIZED_RTOL * np.abs(before).max())
    again = SplitBatchNormPass()(model)
    assert not again.modified and _bn_count(model) == 1


def test_split_keeps_graph_outputs_and_names():
    model = small_cnn()
    outputs = [o.name for o in model.graph.output]
    SplitBatchNormPass()(model)
    assert [o.name for o in model.graph.output] == outputs
    assert read_record(model, "inserted_bn") == ["conv1/nabn_bn", "conv2/nabn_bn", "conv3/nabn_bn", "fc/nabn_bn"]
    # Weight names are untouched, so a chip's noise realization is the same before and after.
    assert {t.name for t in small_cnn().graph.initializer} <= {t.name for t in model.graph.initializer}


def test_existing_batchnorms_are_kept_and_nothing_inserted_after_them():
    model = small_cnn(with_bn=True)
    result = SplitBatchNormPass()(model)
    assert result.details["inserted"] == ["fc/nabn_bn"]  # only the classifier had none
    assert _bn_count(model) == 4
    layers = {x.name: x.bn_origin for x in find_analog_layers(model)}
    assert layers == {"conv1": "original", "conv2": "original", "conv3": "original", "fc": "inserted"}


def test_include_and_exclude_select_layers_by_name():
    only = SplitBatchNormPass(include=r"^conv")(small_cnn())
    assert only.details["inserted"] == ["conv1/nabn_bn", "conv2/nabn_bn", "conv3/nabn_bn"]
    without = SplitBatchNormPass(exclude=r"conv2|fc")(small_cnn())
    assert without.details["inserted"] == ["conv1/nabn_bn", "conv3/nabn_bn"]


def test_shared_and_non_constant_weights_are_skipped_with_reasons():
    model, _x = _single_layer("Conv")
    # a second Conv that reads the same weight
    model.graph.node.append(helper.make_node("Conv", ["x", "w"], ["y2"], name="twin", pads=[1, 1, 1, 1]))
    model.graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, [None] * 4))
    # a MatMul whose weight is a graph input
    model.graph.input.append(helper.make_tensor_value_info("wx", TensorProto.FLOAT, [7, 3]))
    model.graph.node.append(helper.make_node("MatMul", ["out", "wx"], ["z"], name="dynamic"))
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [None] * 4))
    result = SplitBatchNormPass()(model)
    assert not result.modified
    assert "shared" in result.details["skipped"]["layer"]
    assert "shared" in result.details["skipped"]["twin"]
    assert "not a constant" in result.details["skipped"]["dynamic"]


def test_matmul_with_channels_on_last_axis_is_skipped():
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 3)],
        [numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = SplitBatchNormPass()(model)
    assert not result.modified
    assert "rank 3" in result.details["skipped"]["proj"]


def test_split_with_data_measures_statistics_and_keeps_outputs():
    model = small_cnn()
    x = images(200)
    before = run(model, {"input": x})[0]
    result = split(model, {"input": x}, batch_size=50)
    out = run(result.model, {"input": x})[0]
    np.testing.assert_allclose(out, before, rtol=1e-5, atol=1e-5 * np.abs(before).max())
    bn = next(n for n in result.model.graph.node if n.name == "conv1/nabn_bn")
    mean = numpy_helper.to_array(next(t for t in result.model.graph.initializer if t.name == bn.input[3]))
    # numpy reference: conv1's output mean per channel over the whole set
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w1"))
    b = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "b1"))
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    patches = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))  # N,1,8,8,3,3
    conv = np.einsum("nchwij,ocij->nohw", patches.astype(np.float64), w.astype(np.float64)) + b[None, :, None, None]
    np.testing.assert_allclose(mean, conv.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    assert read_record(result.model, "split")["measured"] is True


def test_passes_on_a_raw_onnx_load_with_constant_node_weights():
    """Weights in Constant nodes (Paddle/TF style), model from plain onnx.load: the passes still see them."""
    import copy
    from pathlib import Path

    import onnx
    from onnx import helper

    import nabn_onnx as nb

    model = onnx.load(str(Path(__file__).resolve().parent.parent / "sample_models" / "resnet_fused.onnx"))
    constants = [helper.make_node("Constant", [], [t.name], value=t) for t in model.graph.initializer]
    nodes = constants + list(model.graph.node)
    del model.graph.initializer[:]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    x = np.random.default_rng(0).normal(size=(4, 1, 16, 16)).astype(np.float32)
    (before,) = run(model, {"input": x})
    split = nb.SplitBatchNormPass()(copy.deepcopy(model))
    assert split.modified and len(split.details["inserted"]) == 22 and not split.details["skipped"]
    (after,) = run(split.model, {"input": x})
    assert np.array_equal(before, after)  # the placeholders are exact identities
    injected = nb.InjectWeightNoisePass(nb.make_noise("mul", 0.1, seed=0))(copy.deepcopy(model))
    assert injected.modified and len(injected.details["tensors"]) == 22
    (noisy,) = run(injected.model, {"input": x})
    assert not np.allclose(noisy, before)
