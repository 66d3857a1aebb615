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
