"""Pass plumbing: Sequential, the normalizing passes and the identity-BatchNorm arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import ModelProto, helper, numpy_helper

from nabn_onnx.passes import (
    BN_PARAMETERS,
    BypassInitializerIdentitiesPass,
    LiftConstantWeightsPass,
    NormalizeWeightsPass,
    Pass,
    PassResult,
    Sequential,
    SplitBatchNormPass,
    identity_parameters,
    is_placeholder,
    placeholder_epsilon,
    placeholder_parameters,
)

from builders import images, run, small_cnn

#: The measured identity is exact up to float32 rounding of the BatchNorm's arithmetic.
IDENTITY_ATOL = 1e-5


def _with_constant_weights(model: ModelProto) -> ModelProto:
    """Every initializer as a Constant node, as Paddle and TensorFlow exporters store them."""
    constants = [helper.make_node("Constant", [], [t.name], value=t) for t in model.graph.initializer]
    nodes = list(model.graph.node)
    del model.graph.initializer[:]
    del model.graph.node[:]
    model.graph.node.extend(constants + nodes)
    return model


def _with_identity_alias(model: ModelProto) -> ModelProto:
    """bn2's bias read through an Identity, as PyTorch exports deduplicated parameters."""
    bn2 = next(n for n in model.graph.node if n.name == "bn2")
    model.graph.node.insert(0, helper.make_node("Identity", [bn2.input[2]], ["bias_alias"]))
    bn2.input[2] = "bias_alias"
    return model


class _Count(Pass):
    """Appends its tag to a list of calls; modifies nothing."""

    def __init__(self, calls: list, tag: str):
        self.calls, self.tag = calls, tag

    def call(self, model: ModelProto) -> PassResult:
        self.calls.append(self.tag)
        return PassResult(model, False)


def test_sequential_runs_in_order_and_modified_is_any():
    calls: list = []
    model = _with_constant_weights(small_cnn())
    lifted = len(model.graph.node)
    result = Sequential(_Count(calls, "a"), LiftConstantWeightsPass(), _Count(calls, "b"))(model)
    assert calls == ["a", "b"]
    assert result.model is model and result.modified
    assert [r.modified for r in result.details["results"]] == [False, True, False]
    assert result.details["results"][1].details["lifted"] == lifted - len(model.graph.node)
    again = Sequential(_Count(calls, "a"), LiftConstantWeightsPass(), _Count(calls, "b"))(model)
    assert not again.modified


def test_sequential_of_splits_changes_nothing_the_second_time():
    model = small_cnn()
    x = images(16)
    before = run(model, {"input": x})[0]
    sequence = Sequential(NormalizeWeightsPass(), SplitBatchNormPass())
    first = sequence(model)
    assert first.modified
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == 4
    np.testing.assert_array_equal(run(model, {"input": x})[0], before)
    snapshot = model.SerializeToString()
    second = sequence(model)
    assert not second.modified
    assert model.SerializeToString() == snapshot


def test_sequential_needs_a_pass():
    with pytest.raises(ValueError, match="at least one pass"):
        Sequential()


def test_normalize_weights_pass_lifts_and_bypasses_once():
    model = _with_identity_alias(_with_constant_weights(small_cnn(with_bn=True)))
    x = images(16)
    before = run(model, {"input": x})[0]
    result = NormalizeWeightsPass()(model)
    assert result.modified
    lift, bypass = result.details["results"]
    assert lift.details["lifted"] > 0 and bypass.details["bypassed"] == 1
    assert not any(n.op_type in ("Constant", "Identity") for n in model.graph.node)
    np.testing.assert_array_equal(run(model, {"input": x})[0], before)
    assert not NormalizeWeightsPass()(model).modified
    assert not LiftConstantWeightsPass()(model).modified
    assert not BypassInitializerIdentitiesPass()(model).modified


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_placeholder_is_exact_and_recognized(dtype):
    eps = placeholder_epsilon(dtype)
    params = placeholder_parameters(5, eps, dtype)
    assert list(params) == list(BN_PARAMETERS)
    assert all(v.dtype == np.dtype(dtype) and v.shape == (5,) for v in params.values())
    assert np.all(params["var"].astype(dtype) + np.asarray(eps, dtype) == 1)
    as_read = {k: v.astype(np.float64) for k, v in params.items()}
    assert is_placeholder(as_read, eps)
    as_read["mean"] = as_read["mean"] + 0.5
    assert not is_placeholder(as_read, eps)
    assert not is_placeholder(dict(as_read, bias=None), eps)


def test_identity_parameters_map_the_statistics_back_onto_themselves():
    rng = np.random.default_rng(0)
    mean, var, eps = rng.normal(0, 1, 4), rng.uniform(0.5, 2, 4), 1e-5
    params = identity_parameters(mean, var, eps)
    assert list(params) == list(BN_PARAMETERS)
    x = rng.normal(0, 1, (100, 4))
    y = (x - params["mean"]) / np.sqrt(params["var"] + eps) * params["scale"] + params["bias"]
    np.testing.assert_allclose(y, x, atol=IDENTITY_ATOL)


def test_split_writes_the_placeholder_of_identity_bn():
    model = small_cnn()
    SplitBatchNormPass()(model)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in (n for n in model.graph.node if n.op_type == "BatchNormalization"):
        eps = next(a.f for a in node.attribute if a.name == "epsilon")
        expected = placeholder_parameters(len(inits[node.input[1]]), eps, np.float32)
        for slot, key in enumerate(BN_PARAMETERS, start=1):
            np.testing.assert_array_equal(inits[node.input[slot]], expected[key])
