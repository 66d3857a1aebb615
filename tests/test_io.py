"""Model I/O: Constant weights, metadata, external data, atomic saves."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from nabn_onnx import ModelError, inject, load_model, make_noise, save_model, split
from nabn_onnx.model import read_record, record

from builders import images, run, small_cnn


def _with_constant_weights(model):
    """Move every initializer into a Constant node, as Paddle and TensorFlow exporters do."""
    constants = [helper.make_node("Constant", [], [t.name], value=t) for t in model.graph.initializer]
    nodes = list(model.graph.node)
    del model.graph.initializer[:]
    del model.graph.node[:]
    model.graph.node.extend(constants + nodes)
    return model


def test_constant_node_weights_are_treated_like_initializers():
    model = _with_constant_weights(small_cnn())
    x = images(16)
    before = run(model, {"input": x})[0]
    loaded = load_model(model)
    assert not any(n.op_type == "Constant" for n in loaded.graph.node)
    np.testing.assert_array_equal(run(loaded, {"input": x})[0], before)
    result = split(model)
    assert len(result.details["inserted"]) == 4
    noisy = inject(_with_constant_weights(small_cnn()), make_noise("mul", 0.1, seed=1)).model
    plain = inject(small_cnn(), make_noise("mul", 0.1, seed=1)).model
    weight = lambda m: numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "w2"))
    np.testing.assert_array_equal(weight(noisy), weight(plain))  # the same chip either way


def test_opset_ir_producer_and_metadata_are_kept(tmp_path):
    model = small_cnn()
    model.producer_name, model.producer_version = "exporter", "9.9"
    entry = model.metadata_props.add()
    entry.key, entry.value = "author", "someone"
    out = split(model, output=tmp_path / "s.onnx").model
    saved = onnx.load(str(tmp_path / "s.onnx"))
    assert saved.opset_import[0].version == model.opset_import[0].version
    assert saved.ir_version == model.ir_version
    assert (saved.producer_name, saved.producer_version) == ("exporter", "9.9")
    props = {p.key: p.value for p in saved.metadata_props}
    assert props["author"] == "someone" and "nabn.version" in props and "nabn.split" in props
    assert read_record(out, "split")["inserted"] == 4


def test_external_data_round_trip(tmp_path):
    model = small_cnn(channels=32)
    path = tmp_path / "ext.onnx"
    save_model(model, path, external_data=True)
    assert (tmp_path / "ext.onnx.data").is_file()
    assert path.stat().st_size < (tmp_path / "ext.onnx.data").stat().st_size
    # the in-memory model keeps its tensors after saving
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)
    loaded = load_model(path)
    x = images(8)
    np.testing.assert_array_equal(run(loaded, {"input": x})[0], run(model, {"input": x})[0])
    noisy = inject(path, make_noise("mul", 0.1, seed=0), output=tmp_path / "noisy.onnx").model
    assert load_model(tmp_path / "noisy.onnx").graph.initializer[0].raw_data == noisy.graph.initializer[0].raw_data


def test_record_round_trip():
    model = small_cnn()
    record(model, "inject", {"eta": 0.1, "seed": 3})
    record(model, "inject", {"eta": 0.2, "seed": 3})
    assert read_record(model, "inject") == {"eta": 0.2, "seed": 3}
    assert sum(p.key == "nabn.inject" for p in model.metadata_props) == 1


@pytest.mark.parametrize("content, match", [(b"not a model at all", "not a readable ONNX model"), (b"", "no graph")])
def test_unreadable_files_raise_model_error(tmp_path, content, match):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=match):
        load_model(path)


def test_old_opset_is_refused_with_advice():
    model = small_cnn()
    model.opset_import[0].version = 8
    with pytest.raises(ModelError, match=r"opset 8.*version_converter"):
        load_model(model)


def test_identity_renamed_parameters_are_seen_as_initializers():
    """PyTorch without constant folding routes deduplicated parameters through Identity nodes."""
    model = small_cnn(with_bn=True)
    bn2 = next(n for n in model.graph.node if n.name == "bn2")
    model.graph.node.insert(0, helper.make_node("Identity", [bn2.input[2]], ["bias_alias"]))
    bn2.input[2] = "bias_alias"
    x = images(32)
    before = run(model, {"input": x})[0]
    loaded = load_model(model)
    assert not any(n.op_type == "Identity" for n in loaded.graph.node)
    np.testing.assert_array_equal(run(loaded, {"input": x})[0], before)
