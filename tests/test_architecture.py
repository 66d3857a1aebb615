"""The shape of the code: one-way imports, the pass contract, durable writes."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np
import pytest

from nabn_onnx import calibrate, make_noise
from nabn_onnx.calibration.statsgraph import ExposeBatchNormStatsPass
from nabn_onnx.model import save_model
from nabn_onnx.passes.base import Pass, PassResult, PostconditionError, PreconditionError

from builders import images, small_cnn

ROOT = Path(__file__).resolve().parent.parent


PACKAGE = ROOT / "nabn_onnx"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict:
    """Module -> the nabn_onnx modules it imports anywhere in its body (lazy imports included)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("nabn_onnx"):
                continue
            deps.add(target)
            for alias in node.names:  # "from . import engine" names a module
                if (ROOT / (target + "." + alias.name).replace(".", "/")).with_suffix(".py").exists():
                    deps.add(target + "." + alias.name)
        graph[name] = deps
    return graph


def _reachable(graph: dict, start: str) -> set:
    # the root package only re-exports the public API (and gives io the version string): not a layer
    seen, stack = set(), [start]
    while stack:
        for dep in graph.get(stack.pop(), ()):
            if dep not in seen and dep != "nabn_onnx":
                seen.add(dep)
                stack.append(dep)
    return seen


def test_imports_have_no_cycle():
    graph = _import_graph()
    cycles = sorted(name for name in graph if name != "nabn_onnx" and name in _reachable(graph, name))
    assert not cycles, f"modules on an import cycle: {cycles}"


@pytest.mark.parametrize(
    "module,forbidden",
    [
        ("nabn_onnx.api", "nabn_onnx.evaluation"),
        ("nabn_onnx.api", "nabn_onnx.cli"),
        ("nabn_onnx.data.images", "nabn_onnx.data.reading"),
        ("nabn_onnx.passes.inject", "nabn_onnx.passes.split"),
        ("nabn_onnx.calibration.statsgraph", "nabn_onnx.calibration.calibrator"),
        ("nabn_onnx.calibration.methods", "nabn_onnx.calibration.calibrator"),
        ("nabn_onnx.runtime", "nabn_onnx.calibration"),
    ],
)
def test_data_flows_one_way(module: str, forbidden: str):
    """CLI -> library calls -> passes -> onnxruntime: a lower layer never imports a higher one."""
    reached = _reachable(_import_graph(), module)
    assert not any(m == forbidden or m.startswith(forbidden + ".") for m in reached), sorted(reached)


#: The layers, lowest first: a module may import its own layer and the layers below, never above
#: (lazy imports inside functions included). ``nabn_onnx`` itself only re-exports the public API.
LAYERS = [
    (
        "foundation",
        [
            "nabn_onnx.errors",
            "nabn_onnx.logs",
            "nabn_onnx.progress",
            "nabn_onnx.settings",
            "nabn_onnx.processes",
            "nabn_onnx.tempfiles",
        ],
    ),
    ("model", ["nabn_onnx.model", "nabn_onnx.reports"]),
    ("devices, data and sessions", ["nabn_onnx.noise", "nabn_onnx.data", "nabn_onnx.runtime", "nabn_onnx.memory"]),
    ("passes", ["nabn_onnx.passes"]),
    ("calibration", ["nabn_onnx.calibration"]),
    ("single-model operations", ["nabn_onnx.api", "nabn_onnx.analog"]),
    ("evaluation", ["nabn_onnx.evaluation"]),
    ("command line", ["nabn_onnx.cli"]),
]


def _layer_of(module: str) -> int:
    for index, (_name, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def test_every_module_imports_only_its_layer_and_below():
    """model -> passes -> calibration -> operations -> evaluation -> cli, for every import in the package."""
    graph = _import_graph()
    wrong = []
    for module, deps in graph.items():
        if module == "nabn_onnx":
            continue
        for dep in deps:
            if dep != "nabn_onnx" and _layer_of(dep) > _layer_of(module):
                wrong.append(f"{module} ({LAYERS[_layer_of(module)][0]}) imports {dep} ({LAYERS[_layer_of(dep)][0]})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_private_name_is_imported_from_another_module():
    """A name starting with _ stays in its module: what others need is public and documented."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("nabn_onnx")):
                found += [
                    f"{path.relative_to(ROOT)}: {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert not found, found


def test_modules_are_small_or_say_why():
    """About 450 lines a module; a larger one says why in its docstring (its size in lines, and the reason)."""
    large = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if text.count("\n") > 450:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if "lines" not in doc:  # a large module says in its docstring why it holds so many lines
                large.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
    assert not large, large


class _Replaces(Pass):
    def call(self, model):
        return PassResult(small_cnn(), True)


def test_pass_contract_errors_have_their_own_types():
    with pytest.raises(PreconditionError, match="ModelProto"):
        _Replaces()("not a model")
    with pytest.raises(PostconditionError, match="in place"):
        _Replaces()(small_cnn())
    with pytest.raises(PreconditionError, match="no BatchNormalization named"):
        ExposeBatchNormStatsPass(train=["missing"])(small_cnn(with_bn=True))


def test_expose_pass_returns_its_outputs_and_keeps_no_state():
    expose = ExposeBatchNormStatsPass(tap=["bn1"])
    result = expose(small_cnn(with_bn=True))
    assert set(result.details["outputs"]) == {"bn1"}
    assert not hasattr(expose, "outputs")


def test_saves_are_synced_before_and_after_the_rename(tmp_path: Path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    save_model(small_cnn(), tmp_path / "m.onnx")
    assert len(synced) >= 2  # the file, then its folder


def test_calibration_report_names_its_steps_outcome():
    result = calibrate(small_cnn(), {"input": images(128)}, noise=make_noise("mul", 0.2, seed=0))
    data = result.report.to_dict()
    assert data["mode"] == "simulated" and data["batch"] == "dynamic batch" and data["left"] == {}
    assert np.isfinite([layer["mean_shift"] for layer in data["layers"]]).all()
