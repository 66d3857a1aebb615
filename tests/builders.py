"""Models built in code with seeded weights, for the tests."""

from __future__ import annotations

from typing import Dict, List

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def small_cnn(
    seed: int = 0, channels: int = 8, with_bn: bool = False, opset: int = OPSET, size: int = 8, classes: int = 10
) -> onnx.ModelProto:
    """Conv-ReLU-Conv-(+skip)-ReLU-GAP-Gemm classifier on (N, 1, size, size) inputs.

    With ``with_bn`` each Conv is followed by a BatchNormalization with non-trivial statistics.
    """
    rng = np.random.default_rng(seed)
    c = channels
    inits: List[TensorProto] = [
        _init("w1", rng.normal(0, 0.5, (c, 1, 3, 3))),
        _init("b1", rng.normal(0, 0.1, c)),
        _init("w2", rng.normal(0, 0.3, (c, c, 3, 3))),
        _init("w3", rng.normal(0, 0.3, (c, c, 1, 1))),
        _init("fc_w", rng.normal(0, 0.5, (classes, c))),
        _init("fc_b", rng.normal(0, 0.1, classes)),
    ]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1])]
    last = "c1"

    def bn(src: str, tag: str) -> str:
        if not with_bn:
            return src
        inits.extend(
            [
                _init(f"{tag}_s", rng.uniform(0.5, 1.5, c)),
                _init(f"{tag}_b", rng.normal(0, 0.2, c)),
                _init(f"{tag}_m", rng.normal(0, 0.5, c)),
                _init(f"{tag}_v", rng.uniform(0.5, 2.0, c)),
            ]
        )
        nodes.append(
            helper.make_node(
                "BatchNormalization",
                [src, f"{tag}_s", f"{tag}_b", f"{tag}_m", f"{tag}_v"],
                [f"{tag}_out"],
                name=f"{tag}",
                epsilon=1e-5,
            )
        )
        return f"{tag}_out"

    last = bn(last, "bn1")
    nodes.append(helper.make_node("Relu", [last], ["r1"], name="relu1"))
    nodes.append(helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]))
    last = bn("c2", "bn2")
    nodes.append(helper.make_node("Conv", [last, "w3"], ["c3"], name="conv3"))
    last = bn("c3", "bn3")
    nodes.append(helper.make_node("Add", [last, "r1"], ["sum"], name="add"))
    nodes.append(helper.make_node("Relu", ["sum"], ["r2"], name="relu2"))
    nodes.append(helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="nabn-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def images(n: int, seed: int = 1, size: int = 8) -> np.ndarray:
    """Seeded random inputs shaped like the digits samples."""
    return np.random.default_rng(seed).uniform(0, 1, (n, 1, size, size)).astype(np.float32)


def run(model: onnx.ModelProto, feeds: Dict[str, np.ndarray], optimize: bool = False) -> List[np.ndarray]:
    """Outputs of ``model`` in onnxruntime (optimizations off unless asked)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


#: ResNet-50 (build_resnet50, for tests/test_large.py and tools/bench/): bottleneck blocks per stage
#: and their widths (output channels = 4 x width).
STAGES = ((3, 64), (4, 128), (6, 256), (3, 512))


def build_resnet50(seed: int = 0, classes: int = 1000, width: float = 1.0):
    """A ResNet-50 with folded BatchNorm (Conv with bias) as an ``onnx.ModelProto``.

    Args:
        seed: weights come from ``numpy.random.default_rng(seed)``.
        classes: size of the classifier.
        width: channel multiplier (1.0 is ResNet-50; 0.25 gives a model of about 2 MB).
    """
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def conv(x: str, c_in: int, c_out: int, k: int, stride: int, name: str, relu: bool = True) -> str:
        fan_in = c_in * k * k
        w = rng.standard_normal((c_out, c_in, k, k), dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        b = rng.standard_normal(c_out, dtype=np.float32) * np.float32(0.01)
        inits.extend([numpy_helper.from_array(w, f"{name}.weight"), numpy_helper.from_array(b, f"{name}.bias")])
        pad = k // 2
        nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{name}.weight", f"{name}.bias"],
                [f"{name}.out"],
                name=name,
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[pad] * 4,
            )
        )
        if not relu:
            return f"{name}.out"
        nodes.append(helper.make_node("Relu", [f"{name}.out"], [f"{name}.relu"], name=f"{name}.relu"))
        return f"{name}.relu"

    ch = lambda c: max(4, round(c * width))
    x = conv("input", 3, ch(64), 7, 2, "stem")
    nodes.append(
        helper.make_node(
            "MaxPool", [x], ["pool"], name="maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        )
    )
    x, c_in = "pool", ch(64)
    for stage, (blocks, w) in enumerate(STAGES):
        for block in range(blocks):
            stride = 2 if block == 0 and stage > 0 else 1
            name = f"layer{stage + 1}.{block}"
            h = conv(x, c_in, ch(w), 1, 1, f"{name}.conv1")
            h = conv(h, ch(w), ch(w), 3, stride, f"{name}.conv2")
            h = conv(h, ch(w), ch(4 * w), 1, 1, f"{name}.conv3", relu=False)
            skip = x if block else conv(x, c_in, ch(4 * w), 1, stride, f"{name}.downsample", relu=False)
            nodes.append(helper.make_node("Add", [h, skip], [f"{name}.sum"], name=f"{name}.add"))
            nodes.append(helper.make_node("Relu", [f"{name}.sum"], [f"{name}.out"], name=f"{name}.relu"))
            x, c_in = f"{name}.out", ch(4 * w)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"))
    fc_w = rng.standard_normal((classes, c_in), dtype=np.float32) * np.float32(np.sqrt(1.0 / c_in))
    inits.extend(
        [numpy_helper.from_array(fc_w, "fc.weight"), numpy_helper.from_array(np.zeros(classes, np.float32), "fc.bias")]
    )
    nodes.append(helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes,
        "resnet50_folded",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench_large")
    model.ir_version = 8
    return model


def weight_bytes(model) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)
