"""An onnx_graphsurgeon.Graph in, the same kind out: every public call against the real package.

Each call on a graph imported from the fused sample ResNet is compared with the same call
on the ModelProto: the graph written back by ``gs.export_onnx`` (what a TensorRT pipeline
does) gives the same onnxruntime outputs, and the ``nabn.*`` provenance survives the trip.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import nabn_onnx as nb
from nabn_onnx.calibration import calibrator as engine
from nabn_onnx.model import (
    MARKER,
    from_model,
    is_gs_graph,
    read_record,
    record,
    restore_model_fields,
    returns_like,
    to_model,
)
from nabn_onnx.passes.analog_io import AnalogIO, InsertAnalogIOPass, StripAnalogIOPass, measure_input_ranges

gs = pytest.importorskip("onnx_graphsurgeon")
ort = pytest.importorskip("onnxruntime")

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
MODEL = SAMPLES / "resnet_fused.onnx"
CALIB = SAMPLES / "digits_calib.npz"
TEST = SAMPLES / "digits_test.npz"
#: The graph path and the ModelProto path run the same protobuf edits on the same bytes:
#: outputs are compared exactly.
EXACT = 0.0


@pytest.fixture
def proto() -> onnx.ModelProto:
    return onnx.load(str(MODEL))  # each test its own: the passes edit a ModelProto in place


@pytest.fixture
def graph():
    return gs.import_onnx(onnx.load(str(MODEL)))  # refers to its ModelProto's tensors: not `proto`


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.load(TEST)["input"][:64]


def _outputs(model, images) -> np.ndarray:
    """Logits from onnxruntime; a graph is exported the way its users do it, with gs.export_onnx."""
    if is_gs_graph(model):
        model = gs.export_onnx(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": images})[0]


def _same_outputs(a, b, images) -> None:
    np.testing.assert_allclose(_outputs(a, images), _outputs(b, images), rtol=0, atol=EXACT)


def _records(model) -> dict:
    proto = to_model(model) if is_gs_graph(model) else model
    return {p.key: p.value for p in proto.metadata_props if p.key.startswith("nabn.")}


def test_split_returns_a_graph_equal_to_the_modelproto_path(graph, proto, images):
    nodes = len(graph.nodes)
    result = nb.split(graph)
    assert is_gs_graph(result.model) and result.modified
    assert len(graph.nodes) == nodes  # the graph given is not modified
    expected = nb.split(proto)
    assert result.details["inserted"] == expected.details["inserted"]
    assert sum(n.op == "BatchNormalization" for n in result.model.nodes) == len(expected.details["inserted"]) == 22
    _same_outputs(result.model, expected.model, images)
    assert read_record(to_model(result.model), "split") == read_record(expected.model, "split")


def test_split_with_data_measures_the_same_statistics(graph, proto, images):
    kwargs = dict(batch_size=64, max_batches=2)
    result = nb.split(graph, CALIB, **kwargs)
    expected = nb.split(proto, CALIB, **kwargs)
    assert is_gs_graph(result.model)
    _same_outputs(result.model, expected.model, images)
    assert _records(result.model) == _records(expected.model)


def test_inject_keeps_its_record_through_graphsurgeon_and_a_file(graph, proto, images, tmp_path):
    noise = nb.make_noise("mul", 0.2, seed=3)
    result = nb.inject(graph, noise)
    expected = nb.inject(proto, noise)
    assert is_gs_graph(result.model)
    _same_outputs(result.model, expected.model, images)
    assert not np.array_equal(_outputs(result.model, images), _outputs(proto, images))  # the noise is there
    assert read_record(to_model(result.model), "inject") == read_record(expected.model, "inject")

    # what a deployment pipeline does next: graphsurgeon edits, its own export, a file
    edited = result.model.copy()
    edited.cleanup().toposort()
    path = tmp_path / "chip.onnx"
    onnx.save(gs.export_onnx(edited), str(path))
    assert read_record(nb.load_model(path), "inject") == read_record(expected.model, "inject")
    for chip in (result.model, edited, path):  # a second, compounding draw is refused every way
        with pytest.raises(nb.NabnError, match="already carries injected noise"):
            nb.inject(chip, noise)
        with pytest.raises(nb.NabnError, match="already carries injected noise"):
            nb.calibrate(chip, CALIB, noise=noise, max_batches=2)


def test_evaluate_takes_a_graph(graph, proto):
    assert nb.evaluate(graph, TEST, max_batches=2) == nb.evaluate(proto, TEST, max_batches=2)


def test_calibrate_takes_a_graph_and_computes_the_same_model(graph, proto, images):
    noise = nb.make_noise("mul", 0.3, seed=0)
    kwargs = dict(noise=noise, method="paper", batch_size=64, max_batches=2)
    result = nb.calibrate(graph, CALIB, **kwargs)
    expected = nb.calibrate(proto, CALIB, **kwargs)
    _same_outputs(result.model, expected.model, images)
    assert _records(result.model).keys() == _records(expected.model).keys()


def test_calibrate_returns_a_graph(graph):
    result = nb.calibrate(graph, CALIB, noise=nb.make_noise("mul", 0.3, seed=0), method="paper", max_batches=2)
    assert is_gs_graph(result.model)


def test_returns_like_wires_calibrate(graph, proto, images):
    """The wiring the calibrate re-export needs: ``returns_like("model")(engine.calibrate)``."""
    calibrate = returns_like("model")(engine.calibrate)
    kwargs = dict(noise=nb.make_noise("mul", 0.3, seed=0), method="paper", max_batches=2)
    result = calibrate(graph, CALIB, **kwargs)
    assert is_gs_graph(result.model) and isinstance(result.report, nb.CalibrationReport)
    assert isinstance(calibrate(proto, CALIB, **kwargs).model, onnx.ModelProto)
    _same_outputs(result.model, engine.calibrate(proto, CALIB, **kwargs).model, images)
    assert read_record(to_model(result.model), "calibrate") is not None
    assert calibrate.__name__ == "calibrate" and calibrate.__doc__ == engine.calibrate.__doc__


@pytest.mark.parametrize("make", [nb.SplitBatchNormPass, lambda: nb.InjectWeightNoisePass(nb.make_noise("add", 0.01))])
def test_passes_return_graphs_and_stay_idempotent(graph, proto, images, make):
    result = make()(graph)
    expected = make()(proto)  # in place on the ModelProto
    assert is_gs_graph(result.model) and result.modified and result.model is not graph
    _same_outputs(result.model, expected.model, images)
    again = make()(result.model)
    assert not again.modified and is_gs_graph(again.model)
    _same_outputs(again.model, result.model, images)


def test_analog_periphery_passes_on_graphs(graph, proto, images):
    ranges = measure_input_ranges(graph, CALIB, max_batches=1)
    assert ranges == measure_input_ranges(proto, CALIB, max_batches=1)
    settings = AnalogIO(adc_bits=6, dac_bits=5)
    inserted = InsertAnalogIOPass(settings, ranges)(graph)
    assert is_gs_graph(inserted.model) and inserted.modified
    _same_outputs(
        inserted.model,
        InsertAnalogIOPass(settings, ranges)(onnx.ModelProto.FromString(proto.SerializeToString())).model,
        images,
    )
    assert not np.array_equal(_outputs(inserted.model, images), _outputs(proto, images))
    assert not InsertAnalogIOPass(settings, ranges)(inserted.model).modified
    stripped = StripAnalogIOPass()(inserted.model)
    assert is_gs_graph(stripped.model) and stripped.modified
    _same_outputs(stripped.model, proto, images)
    assert not StripAnalogIOPass()(stripped.model).modified


def test_model_fields_survive_the_round_trip(proto):
    model = onnx.ModelProto.FromString(proto.SerializeToString())
    model.doc_string, model.model_version, model.domain = "the model", 7, "ai.example"
    model.graph.doc_string = "the graph\nsecond line"
    entry = model.metadata_props.add()
    entry.key, entry.value = "user.key", 'user value with "quotes"\nand a newline'
    graph_entry = model.graph.metadata_props.add()
    graph_entry.key, graph_entry.value = "graph.key", "graph value"
    graph = from_model(model, like=gs.Graph())
    assert graph.doc_string.startswith("the graph\nsecond line\n\n" + MARKER)
    for kept in (graph, graph.copy(), gs.import_onnx(gs.export_onnx(graph))):
        back = to_model(kept)
        assert back.graph.doc_string == "the graph\nsecond line"
        assert (back.doc_string, back.model_version, back.domain) == ("the model", 7, "ai.example")
        assert [(p.key, p.value) for p in back.metadata_props] == [(p.key, p.value) for p in model.metadata_props]
        assert [(p.key, p.value) for p in back.graph.metadata_props] == [("graph.key", "graph value")]
        assert (back.ir_version, back.producer_name, back.producer_version) == (
            model.ir_version,
            model.producer_name,
            model.producer_version,
        )
        assert [(o.domain, o.version) for o in back.opset_import] == [(o.domain, o.version) for o in model.opset_import]


def test_a_key_already_in_the_model_wins_over_the_line(proto):
    model = onnx.ModelProto.FromString(proto.SerializeToString())
    record(model, "inject", {"seed": 1})
    exported = gs.export_onnx(from_model(model, like=gs.Graph()))
    record(exported, "inject", {"seed": 2})
    assert restore_model_fields(exported)
    assert read_record(exported, "inject") == {"seed": 2}
    assert not restore_model_fields(exported)  # the line is gone
    assert MARKER not in exported.graph.doc_string


@pytest.mark.parametrize(
    "line", ["{broken", "[1, 2]", '{"metadata_props": [1]}', '{"metadata_props": [["k", 2]]}', '{"model_version": "7"}']
)
def test_an_edited_line_leaves_the_doc_string_alone(line):
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [], doc_string="notes " + MARKER + line))
    assert not restore_model_fields(model)
    assert model.graph.doc_string == "notes " + MARKER + line


def test_a_missing_graphsurgeon_is_a_one_line_error(graph, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx_graphsurgeon", None)  # as if not installed
    with pytest.raises(nb.ModelError, match=r"pip install 'nabn-onnx\[graphsurgeon\]'"):
        to_model(graph)


def test_a_graph_graphsurgeon_cannot_export_is_a_one_line_error():
    x = gs.Variable("x", dtype=None, shape=[1])  # graph inputs need a dtype to export
    y = gs.Variable("y", dtype=np.float32, shape=[1])
    graph = gs.Graph(nodes=[gs.Node("Relu", inputs=[x], outputs=[y])], inputs=[x], outputs=[y])
    with pytest.raises(nb.ModelError, match="cannot export the onnx-graphsurgeon graph") as info:
        nb.split(graph)
    assert "\n" not in str(info.value)


def test_graph_output_is_saved_with_its_records_and_external_data(graph, tmp_path):
    out = tmp_path / "split.onnx"
    result = nb.split(graph, output=out, external_data=True)
    assert is_gs_graph(result.model)
    assert (tmp_path / "split.onnx.data").stat().st_size > 100_000
    saved = nb.load_model(out)
    assert read_record(saved, "split")["inserted"] == 22
    assert onnx.load(str(out), load_external_data=False).graph.doc_string == ""  # records in metadata_props


def test_paths_and_modelprotos_never_import_graphsurgeon():
    code = (
        "import sys, nabn_onnx as nb; nb.split(sys.argv[1]); "
        "nb.evaluate(sys.argv[1], sys.argv[2], max_batches=1); "
        "assert 'onnx_graphsurgeon' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code, str(MODEL), str(TEST)], check=True)


def test_is_gs_graph_is_false_for_the_other_kinds(proto):
    assert not any(is_gs_graph(x) for x in (proto, str(MODEL), MODEL, None))
    assert from_model(proto, like=str(MODEL)) is proto


def test_a_pass_given_a_graphsurgeon_export_sees_its_records(graph):
    """onnx.load of a file gs.export_onnx wrote, straight into a pass: the record is read, no second draw."""
    noise = nb.make_noise("mul", 0.1, seed=0)
    exported = gs.export_onnx(nb.inject(graph, noise).model)
    assert MARKER in exported.graph.doc_string
    result = nb.InjectWeightNoisePass(noise)(exported)
    assert not result.modified and "already" in result.details
    assert MARKER not in exported.graph.doc_string and read_record(exported, "inject") is not None


def test_sweep_and_session_read_a_graph(graph):
    kwargs = dict(noise="mul", etas=[0.1], seeds=1, calib_batches=2, test_batches=2)
    assert nb.sweep(graph, CALIB, TEST, **kwargs).rows == nb.sweep(MODEL, CALIB, TEST, **kwargs).rows
    split = nb.split(graph).model
    x = np.load(TEST)["input"][:16]
    np.testing.assert_array_equal(
        nb.NabnSession(split).run(None, {"input": x})[0],
        nb.NabnSession(nb.split(MODEL).model).run(None, {"input": x})[0],
    )


def _if_model() -> onnx.ModelProto:
    """A Conv whose output goes through an If, with a weight inside a branch and a sparse initializer."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    then_graph = helper.make_graph(
        [helper.make_node("Mul", ["y", "k"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.float32([2.0]), "k")],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Neg", ["y"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
    )
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.float32([1.0]), "s"), numpy_helper.from_array(np.int64([0]), "s_i"), [1]
    )
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
            helper.make_node("Add", ["y", "s"], ["y2"], name="add"),
            helper.make_node("If", ["c"], ["z"], then_branch=then_graph, else_branch=else_graph, name="if"),
        ],
        "with_if",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("z", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("y2", TensorProto.FLOAT, None),
        ],
        [numpy_helper.from_array(rng.standard_normal((3, 2, 1, 1)).astype(np.float32), "w")],
        doc_string="a graph",
        sparse_initializer=[sparse],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="test", producer_version="1"
    )
    model.ir_version = 8
    return model


@pytest.mark.parametrize("load", [lambda: onnx.load(str(MODEL)), _if_model])
def test_to_model_is_graphsurgeons_export_byte_for_byte(load):
    graph = gs.import_onnx(load())
    assert to_model(graph).SerializeToString() == gs.export_onnx(graph).SerializeToString()


class _Holder:
    def __init__(self, model):
        self.model = model


@pytest.mark.parametrize(
    "wrap,unwrap",
    [(lambda m: m, lambda r: r), (_Holder, lambda r: r.model), (lambda m: nb.PassResult(m, True), lambda r: r.model)],
)
def test_returns_like_converts_a_model_or_its_model_field(graph, proto, wrap, unwrap):
    @returns_like("model")
    def passthrough(model, note="x"):
        return wrap(nb.load_model(model))

    assert is_gs_graph(unwrap(passthrough(graph)))
    assert is_gs_graph(unwrap(passthrough(note="y", model=graph)))
    assert isinstance(unwrap(passthrough(proto)), onnx.ModelProto)
    assert returns_like()(lambda model: 3)(graph) == 3  # nothing model-like to convert
