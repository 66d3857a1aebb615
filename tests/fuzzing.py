"""Mutations of valid small models, and what the loader makes of them (tests/test_hostile.py,
``python -m tools.checks.fuzz_loader``).

Each case takes one of a few valid seed models, applies 1-4 mutations (bit flips,
truncation, splices of its own bytes, random overwrites, deletions, varint-boundary
bytes, structural edits), writes it to a folder and runs ``load_model`` +
``inspect_model`` + ``SplitBatchNormPass`` + ``InjectWeightNoisePass`` on it. Any exception
other than :class:`nabn_onnx.NabnError` is a crash.

Imported as ``tests.fuzzing`` (by the tests and by the script alike).
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import List, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from nabn_onnx import InjectWeightNoisePass, NabnError, SplitBatchNormPass, inspect_model, load_model, make_noise

__all__ = ["MUTATIONS", "mutate", "run_case", "seed_models", "try_model"]

MUTATIONS = ("flip", "truncate", "splice", "overwrite", "delete", "varint", "field", "field")
_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "Relu", "Add", "Constant", "Identity", "If")
_INTS = (-(2**63), -(2**31), -1, 0, 1, 2, 3, 7, 2**31, 2**40, 2**62)


def _edit_field(data: bytes, rng: np.random.Generator) -> bytes:
    """One structural edit of a parsed model: bytes that still parse, so the loader's later stages get hit."""
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:  # an earlier mutation broke parsing; fall back to a bit flip
        return mutate(data, ["flip"], rng)
    graph = model.graph
    pick = lambda seq: seq[int(rng.integers(len(seq)))]
    what = int(rng.integers(12))
    if what == 0 and graph.initializer:
        pick(graph.initializer).data_type = int(rng.integers(0, 45))
    elif what == 1 and graph.initializer:
        tensor = pick(graph.initializer)
        if tensor.dims:
            tensor.dims[int(rng.integers(len(tensor.dims)))] = int(pick(_INTS))
        else:
            tensor.dims.append(int(pick(_INTS)))
    elif what == 2 and graph.initializer:
        tensor = pick(graph.initializer)
        tensor.raw_data = tensor.raw_data[: int(rng.integers(len(tensor.raw_data) + 1))]
    elif what == 3 and graph.node:
        pick(graph.node).op_type = pick(_OPS)
    elif what == 4 and graph.node:
        node = pick(graph.node)
        if node.attribute:
            attr = pick(node.attribute)
            if attr.type == onnx.AttributeProto.INT:
                attr.i = int(pick(_INTS))
            elif attr.type == onnx.AttributeProto.INTS and attr.ints:
                attr.ints[int(rng.integers(len(attr.ints)))] = int(pick(_INTS))
            elif attr.type == onnx.AttributeProto.FLOAT:
                attr.f = float(pick([np.nan, np.inf, -1.0, 0.0, 1e30]))
        else:
            node.attribute.append(
                helper.make_attribute(pick(["group", "transB", "training_mode", "axis"]), int(pick(_INTS)))
            )
    elif what == 5 and graph.node:
        node = pick(graph.node)
        if node.input and rng.random() < 0.5:
            del node.input[int(rng.integers(len(node.input)))]
        else:
            node.input.append(pick(["", "w1", "input", "nowhere"]))
    elif what == 6 and model.opset_import:
        model.opset_import[0].version = int(rng.integers(1, 30))
    elif what == 7 and graph.input:
        dims = graph.input[0].type.tensor_type.shape.dim
        if dims:
            dims[int(rng.integers(len(dims)))].dim_value = int(pick(_INTS[4:]))
    elif what == 8 and graph.node:
        graph.node.append(pick(graph.node))
    elif what == 9 and graph.initializer:
        tensor = pick(graph.initializer)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value=pick(["w.bin", "../w.bin", "/etc/passwd", "", "fuzz.onnx"]))
    elif what == 10:
        entry = model.metadata_props.add()
        entry.key = pick(["nabn.inserted_bn", "nabn.inject", "nabn.split"])
        entry.value = pick(["[", "null", "[1, 2]", '{"a": 1}', '"conv1"', '["conv1/nabn_bn"]'])
    elif graph.node:
        del graph.node[int(rng.integers(len(graph.node)))]
    return model.SerializeToString()


def _matmul_model() -> onnx.ModelProto:
    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.normal(size=(6, 4)).astype(np.float32), "w")
    const = helper.make_node(
        "Constant", [], ["w2"], value=numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "w2v")
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        const,
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def seed_models() -> List[bytes]:
    """Serialized valid models the mutations start from."""
    from tests.builders import small_cnn

    return [
        small_cnn(seed=0, channels=4).SerializeToString(),
        small_cnn(seed=1, channels=3, with_bn=True, opset=9).SerializeToString(),
        small_cnn(seed=2, channels=2, with_bn=True, opset=17).SerializeToString(),
        _matmul_model().SerializeToString(),
    ]


def mutate(data: bytes, ops: Sequence[str], rng: np.random.Generator) -> bytes:
    """Apply the mutations ``ops`` in order; the result always differs from ``data``."""
    buf = bytearray(data)
    for op in ops:
        n = len(buf)
        if n == 0:
            buf = bytearray(rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes())
            continue
        if op == "flip":
            for _ in range(int(rng.integers(1, 9))):
                buf[int(rng.integers(n))] ^= 1 << int(rng.integers(8))
        elif op == "truncate":
            buf = buf[: int(rng.integers(0, n))]
        elif op == "splice":
            start = int(rng.integers(n))
            piece = buf[start : start + int(rng.integers(1, 256))]
            at = int(rng.integers(n + 1))
            buf = buf[:at] + piece + buf[at:]
        elif op == "overwrite":
            start = int(rng.integers(n))
            size = int(rng.integers(1, 33))
            buf[start : start + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        elif op == "delete":
            start = int(rng.integers(n))
            del buf[start : start + int(rng.integers(1, 65))]
        elif op == "field":
            buf = bytearray(_edit_field(bytes(buf), rng))
        elif op == "varint":
            for _ in range(int(rng.integers(1, 4))):
                buf[int(rng.integers(n))] = int(rng.choice([0x00, 0x7F, 0x80, 0xFF]))
        else:
            raise ValueError(f"unknown mutation {op!r}")
    out = bytes(buf)
    if out == data:  # a flip pair or a no-op splice: force a difference
        out = out[:-1] if out else b"\x00"
    return out


def _label(exc: BaseException) -> str:
    """A stable histogram key: the error class and the message's gist without names or numbers."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    text = text.replace("onnx's", "onnx")
    text = re.sub(r"'[^']*'|\"[^\"]*\"|/\S+|\(.*", "_", text)
    text = re.sub(r"\d+", "N", text)
    return f"{type(exc).__name__}: {' '.join(text.split()[:8])}"


def try_model(data: bytes, folder: Path) -> str:
    """Load, inspect, split and inject the model ``data``; return the outcome label.

    Returns ``"ok"`` on success, ``"<NabnError subclass>"`` on a clean refusal, and
    ``"CRASH <type>: <message>"`` for anything else.
    """
    outcome, _ = run_case(data, folder)
    return outcome


def run_case(data: bytes, folder: Path) -> Tuple[str, str]:
    """The outcome label (as :func:`try_model`) and the refusal's gist or the crash's traceback."""
    path = Path(folder) / "fuzz.onnx"
    path.write_bytes(data)
    try:
        model = load_model(path)
        inspect_model(model)
        SplitBatchNormPass()(model)
        InjectWeightNoisePass(make_noise("mul", 0.05, seed=1))(model)
    except NabnError as exc:
        return type(exc).__name__, _label(exc)
    except RecursionError as exc:  # same class of bug as any other crash, kept apart for the report
        return f"CRASH {type(exc).__name__}: {str(exc)[:200]}", traceback.format_exc()
    except Exception as exc:  # a crash is what we are looking for
        return f"CRASH {type(exc).__name__}: {str(exc)[:200]}", traceback.format_exc()
    return "ok", "ok"
