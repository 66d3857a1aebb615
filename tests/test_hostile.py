"""Hostile files: external data that leaves the model's folder, truncated side files,
absurd tensor sizes, and a bounded fuzz run over the loader and ``inspect``.

The fuzz test mutates the bytes of valid small models (bit flips, truncations, random
splices, random overwrites) and requires every outcome to be success or a
:class:`~nabn_onnx.errors.NabnError`. ``FUZZ_EXAMPLES`` cases run here (a few seconds);
``python -m tools.checks.fuzz_loader --cases 20000`` runs many more and prints the outcomes
(the mutations are in ``tests/fuzzing.py``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import external_data_helper

from nabn_onnx import ModelError, NabnError, load_model, make_noise
from nabn_onnx.api import inject, inspect_model, split
from tests import fuzzing

from builders import small_cnn

#: Mutated models tried by the fuzz test (about 10 s on one core).
FUZZ_EXAMPLES = 1500


def _save_external(model: onnx.ModelProto, folder: Path, location: str = "weights.bin") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(
        model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=location, size_threshold=0
    )
    return path


def _relocate(path: Path, location: str) -> None:
    """Point every external tensor of the model at ``path`` to ``location`` (rewrites the .onnx only)."""
    model = onnx.load(path, load_external_data=False)
    for tensor in external_data_helper._get_all_tensors(model):
        if external_data_helper.uses_external_data(tensor):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
    path.write_bytes(model.SerializeToString())


@pytest.fixture
def external(tmp_path: Path):
    """A model in ``tmp_path/model`` whose weights live in ``weights.bin``, and a copy of them outside."""
    path = _save_external(small_cnn(channels=16), tmp_path / "model")
    outside = tmp_path / "outside.bin"
    outside.write_bytes((tmp_path / "model" / "weights.bin").read_bytes())
    return path, outside


def test_external_data_inside_folder_loads(external) -> None:
    path, _ = external
    model = load_model(path)
    assert all(not external_data_helper.uses_external_data(t) for t in model.graph.initializer)
    assert sum(len(t.raw_data) for t in model.graph.initializer) > 0


def test_external_data_dotdot_is_refused(external) -> None:
    path, _outside = external
    _relocate(path, "../outside.bin")
    with pytest.raises(ModelError, match="outside the model's folder"):
        load_model(path)


def test_external_data_absolute_path_is_refused(external) -> None:
    path, outside = external
    _relocate(path, str(outside))
    with pytest.raises(ModelError, match="relative path inside the model's folder"):
        load_model(path)


def test_external_data_symlink_out_of_folder_is_refused(external) -> None:
    path, outside = external
    (path.parent / "weights.bin").unlink()
    (path.parent / "weights.bin").symlink_to(outside)
    with pytest.raises(ModelError, match="outside the model's folder"):
        load_model(path)


def test_external_data_symlinked_subfolder_is_refused(external, tmp_path: Path) -> None:
    path, _outside = external
    (path.parent / "sub").symlink_to(tmp_path)
    _relocate(path, "sub/outside.bin")
    with pytest.raises(ModelError, match="outside the model's folder"):
        load_model(path)


def test_external_data_pointing_at_a_folder_is_refused(external) -> None:
    path, _ = external
    (path.parent / "adir").mkdir()
    _relocate(path, "adir")
    with pytest.raises(ModelError, match="does not exist"):
        load_model(path)


@pytest.mark.parametrize("location", ["", ".", "/etc/passwd", "../../../../../../etc/passwd", "a/../../outside.bin"])
def test_external_data_odd_locations_are_refused(external, location: str) -> None:
    path, _ = external
    _relocate(path, location)
    with pytest.raises(ModelError):
        load_model(path)


def test_external_data_truncated_file(external) -> None:
    path, _ = external
    data = path.parent / "weights.bin"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(ModelError, match="external data"):
        load_model(path)


@pytest.mark.parametrize(
    "key,value", [("offset", "abc"), ("length", "-1"), ("offset", "-8"), ("length", str(2**62)), ("offset", str(2**62))]
)
def test_external_data_bad_offset_or_length(external, key: str, value: str) -> None:
    path, _ = external
    model = onnx.load(path, load_external_data=False)
    tensor = next(t for t in model.graph.initializer if external_data_helper.uses_external_data(t))
    entries = {e.key: e for e in tensor.external_data}
    if key in entries:
        entries[key].value = value
    else:
        tensor.external_data.add(key=key, value=value)
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError):
        load_model(path)


@pytest.mark.parametrize("dims", [[2**20, 2**20], [2**40], [2**31, 2**31, 4], [2**62, 4], [-1, 9]])
def test_absurd_initializer_dims(tmp_path: Path, dims) -> None:
    """A tensor claiming 2**40 elements and holding none is refused before anything allocates it."""
    model = small_cnn()
    tensor = next(t for t in model.graph.initializer if t.name == "w1")
    tensor.ClearField("raw_data")
    del tensor.dims[:]
    tensor.dims.extend(dims)
    path = tmp_path / "absurd.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match=r"checker|corrupt"):
        load_model(path)
    with pytest.raises(ModelError):
        split(path)


def test_empty_weight_with_huge_dim(tmp_path: Path) -> None:
    """dims [0, 2**40] hold zero elements: a valid empty tensor, which no pass may choke on."""
    model = small_cnn()
    tensor = next(t for t in model.graph.initializer if t.name == "w1")
    tensor.raw_data = b""
    del tensor.dims[:]
    tensor.dims.extend([0, 2**40])
    path = tmp_path / "empty.onnx"
    path.write_bytes(model.SerializeToString())
    for call in (lambda: inspect_model(path), lambda: split(path), lambda: inject(path, make_noise("mul", 0.1))):
        with contextlib.suppress(NabnError):
            call()


def test_absurd_input_shape_is_harmless(tmp_path: Path) -> None:
    """Huge symbolic input dims are only metadata: loading and splitting must not allocate them."""
    model = small_cnn()
    dim = model.graph.input[0].type.tensor_type.shape.dim
    dim[2].dim_value = 2**40
    dim[3].dim_value = 2**40
    path = tmp_path / "wide.onnx"
    path.write_bytes(model.SerializeToString())
    result = split(path)
    assert result.modified


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""
    from nabn_onnx.model import encode_varint

    return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload


def test_deeply_nested_subgraphs(tmp_path: Path) -> None:
    """Graphs nested beyond protobuf's depth limit are a clean parse error, not a crash.

    Built byte by byte (ModelProto.graph=7, GraphProto.node=1, NodeProto.attribute=5,
    AttributeProto.g=6), since the Python protobuf API refuses to build it.
    """
    graph = b""
    for _ in range(200):
        graph = _field(1, _field(5, _field(6, graph)))
    path = tmp_path / "deep.onnx"
    path.write_bytes(_field(7, graph))
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        load_model(path)


# --------------------------------------------------------------------------- fuzz


_SEEDS = fuzzing.seed_models()


@st.composite
def mutated_models(draw) -> bytes:
    base = _SEEDS[draw(st.integers(0, len(_SEEDS) - 1))]
    ops = draw(st.lists(st.sampled_from(fuzzing.MUTATIONS), min_size=1, max_size=4))
    seed = draw(st.integers(0, 2**32 - 1))
    return fuzzing.mutate(base, ops, np.random.default_rng(seed))


_outcomes = {}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inject on fuzzed NaN/Inf weights
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=mutated_models())
def _fuzz_one(data: bytes) -> None:
    outcome = fuzzing.try_model(data, _fuzz_one.folder)
    _outcomes[outcome] = _outcomes.get(outcome, 0) + 1
    assert not outcome.startswith("CRASH"), outcome


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inject on fuzzed NaN/Inf weights
def test_fuzz_loader_and_inspect(tmp_path_factory) -> None:
    """Mutated models end in success or NabnError, never another exception."""
    _outcomes.clear()
    _fuzz_one.folder = tmp_path_factory.mktemp("fuzz")
    _fuzz_one()
    total = sum(_outcomes.values())
    print(f"\nfuzz: {total} cases: " + ", ".join(f"{k}={v}" for k, v in sorted(_outcomes.items())))
    assert total >= FUZZ_EXAMPLES // 2  # hypothesis may stop early only on duplicates
    assert len(_outcomes) > 1  # the mutations reach past the parser


def test_fuzz_mutators_change_the_bytes() -> None:
    rng = np.random.default_rng(0)
    base = _SEEDS[0]
    for op in fuzzing.MUTATIONS:
        assert fuzzing.mutate(base, [op], rng) != base, op
