"""tools/: every script answers ``--help`` (exit 0, without PyTorch, writing nothing), and every
script that needs neither PyTorch, the network nor the real-model cache runs once on a few
samples of ``sample_models/`` (seconds each; about a minute for all on one core).

A script is a module of ``tools/`` with an ``if __name__ == "__main__":`` block; each must be
listed in :data:`RUNS` or in :data:`HELP_ONLY` (with the reason), so a new one gets a smoke run
or says why not. The scripts run as the README says, ``python -m tools.<kind>.<name>`` from the
repository root, in fresh processes.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"


def _scripts() -> List[str]:
    found = []
    for path in sorted((ROOT / "tools").rglob("*.py")):
        if 'if __name__ == "__main__":' in path.read_text():
            found.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


SCRIPTS = _scripts()

#: Scripts run with ``--help`` only, and why.
HELP_ONLY = {
    "tools.samples.make_sample_models": "needs torch and scikit-learn (and rewrites sample_models/)",
    "tools.samples.make_model_variants": "needs torch (and rewrites sample_models/variants/)",
    "tools.samples.make_ocr_sample": "downloads a wheel from PyPI",
    "tools.samples.make_real_models": "downloads wheels from PyPI, needs torch",
    "tools.results.make_real_results": "needs the real-model cache",
    "tools.results.mobilenet_limits": "needs the real-model cache",
    "tools.results.dbnet_fidelity": "needs the real-model cache",
    "tools.reference.compare_aihwkit": "needs torch and aihwkit's source (PyPI)",
    "tools.reference.noise_reference": "needs torch",
    "tools.reference.torch_reference": "needs torch",
    "tools.reference.noise_collapse_check": "needs the real-model cache",
    "tools.checks.real_cli_check": "needs the real-model cache",
    "tools.reference.output_digests": "run in full on the samples by tests/test_frozen_outputs.py",
}

#: One small run per script: its arguments (shell words; ``{tmp}``, ``{samples}``, ``{calib}``,
#: ``{test}``, ``{ocr_calib}``, ``{ocr_test}`` filled in) and the files it must write into ``{tmp}``.
RUNS = {
    "tools.bench.profile_calibrate": ("{samples}/resnet_fused.onnx {calib} --batch-size 32 --max-batches 2", []),
    "tools.bench.bench_calibrate": ("--batches 1 --repeats 1 --no-torch", []),
    "tools.bench.bench_stats_graph": (
        "{samples}/mobilenet_fused.onnx {calib} --samples 32 --batch-size 16 --repeat 1 --profile",
        [],
    ),
    "tools.bench.bench_large": ("--width 0.1 --steps split --formats inline", []),
    "tools.bench.bench_graphsurgeon": ("--width 0.1 --steps 'to_model,split gs.Graph'", []),
    "tools.bench.bench_real_calibrate": (
        "--models resnet50 --width 0.1 --samples 8 --only plain,inject,calibrate-images --json {tmp}/bench.json",
        ["bench.json"],
    ),
    "tools.bench.bench_chip_reuse": (
        "{samples}/resnet_fused.onnx {calib} --chips 2 --batch-size 32 --max-batches 4",
        [],
    ),
    "tools.bench.bench_sweep": ("--chips 1 --scale-chips 1 --etas 0.1 --no-ray --calib {calib} --test {test}", []),
    "tools.checks.fuzz_loader": ("--cases 50", []),
    "tools.checks.gate_samples": ("--models resnet_fused --seeds 1 --etas 0.1", []),
    "tools.results.compare_estimators": ("--seeds 1 --models resnet_fused --settings mul:0.3", []),
    "tools.results.per_sample_gain": ("--task resnet_fused --noise add --eta 0.01 --seed 1 --test-samples 64", []),
    "tools.results.compare_methods": (
        "--seeds 1 --models resnet_fused --grid mul:0.1 --max-batches= --calib {calib} --test {test} --out {tmp}/m.md",
        ["m.md"],
    ),
    "tools.results.device_table": (
        "--models {samples}/resnet_bn.onnx --seeds 1 --limit 1 --calib {calib} --test {test} --report {tmp}/devices.md",
        ["devices.md"],
    ),
    "tools.results.drift_experiment": (
        "--chips 1 --etas 0.1 --passes 1 --calib {calib} --test {test} --out {tmp}",
        ["drift.md", "drift.png"],
    ),
    "tools.results.ocr_experiment": (
        "--seeds 0 --mul-etas 0.1 --add-etas --batch-size 16 --calib {ocr_calib} --test {ocr_test} --out {tmp}/ocr.md",
        ["ocr.md"],
    ),
    "tools.results.make_results": ("--quick --out {tmp}", ["results.md", "results.json"]),
    "tools.results.auto_grid": ("--only resnet_fused --seeds 1 --out {tmp}/auto.md", ["auto.md"]),
}

#: Imported by no script's --help: the optional stacks CI does not install.
BLOCKED = ("torch", "torchvision", "sklearn", "aihwkit")

HELP_RUNNER = """
import contextlib, io, json, runpy, sys
for name in {blocked!r}:
    sys.modules[name] = None  # import fails as if not installed
results = {{}}
for script in sys.argv[1:]:
    sys.argv = [script, "--help"]
    out = io.StringIO()
    code = None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            runpy.run_module(script, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code
    except BaseException as exc:
        code = f"{{type(exc).__name__}}: {{exc}}"
    results[script] = [code, out.getvalue()]
print(json.dumps(results))
"""


def _env(tmp: Path) -> Dict[str, str]:
    """The scripts' environment: the repository importable, temporary files under ``tmp``."""
    tmp.mkdir(exist_ok=True)
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "TMPDIR": str(tmp),
        "MPLBACKEND": "Agg",
    }


def _listing() -> Dict[str, List[str]]:
    """What the repository's top folders hold: a script run must not add or remove anything there."""
    return {
        str(d): sorted(n for n in os.listdir(d) if not n.startswith(".") and n != "__pycache__")
        for d in (ROOT, ROOT / "docs", SAMPLES, ROOT / "tools")
    }


needs_samples = pytest.mark.skipif(
    not (SAMPLES / "resnet_fused.onnx").exists(), reason="sample_models/ not built (tools.samples.make_sample_models)"
)


def test_every_script_is_classified():
    assert SCRIPTS, "no scripts found under tools/"
    unclassified = sorted(set(SCRIPTS) - set(RUNS) - set(HELP_ONLY))
    assert not unclassified, f"add these scripts to RUNS or HELP_ONLY: {unclassified}"
    assert not set(RUNS) & set(HELP_ONLY)
    assert set(RUNS) | set(HELP_ONLY) <= set(SCRIPTS), "a listed script no longer exists"


@pytest.fixture(scope="module")
def helps(tmp_path_factory) -> Dict[str, list]:
    """``{script: [exit code, output]}`` of ``--help``, every script in one fresh process (in an empty folder)."""
    cwd, tmp = tmp_path_factory.mktemp("help"), tmp_path_factory.mktemp("help-tmp")
    before = _listing()
    code = HELP_RUNNER.format(blocked=BLOCKED)
    done = subprocess.run(
        [sys.executable, "-c", code, *SCRIPTS], cwd=cwd, env=_env(tmp), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert os.listdir(cwd) == [], "--help wrote files"
    assert _listing() == before, "--help changed the repository"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(helps, script):
    code, out = helps[script]
    assert code in (0, None), f"{script} --help: {code}\n{out}"
    assert "usage:" in out, out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Dict[str, str]:
    """Small calibration and test sets cut from the bundled ones (the scripts' speed is not what is tested)."""
    folder = tmp_path_factory.mktemp("data")
    paths = {"samples": str(SAMPLES)}
    for key, source, count in (
        ("calib", SAMPLES / "digits_calib.npz", 128),
        ("test", SAMPLES / "digits_test.npz", 64),
        ("ocr_calib", SAMPLES / "third_party" / "ocr_calib.npz", 32),
        ("ocr_test", SAMPLES / "third_party" / "ocr_test.npz", 16),
    ):
        if source.exists():
            with np.load(source) as archive:
                np.savez(folder / source.name, **{k: archive[k][:count] for k in archive.files})
        paths[key] = str(folder / source.name)
    return paths


@needs_samples
@pytest.mark.parametrize("script", sorted(RUNS))
def test_small_run(script, data, tmp_path):
    args, outputs = RUNS[script]
    if script == "tools.bench.bench_graphsurgeon":
        pytest.importorskip("onnx_graphsurgeon")
    if script == "tools.results.ocr_experiment" and not Path(data["ocr_calib"]).exists():
        pytest.skip("sample_models/third_party/ not built (tools.samples.make_ocr_sample)")
    argv = [word.format(tmp=tmp_path, **data) for word in shlex.split(args)]
    before = _listing()
    done = subprocess.run(
        [sys.executable, "-m", script, *argv],
        cwd=tmp_path,
        env=_env(tmp_path / "tmp"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{script} {' '.join(argv)}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    assert done.stdout.strip(), f"{script} printed nothing"
    for name in outputs:
        assert (tmp_path / name).stat().st_size > 0, f"{script} did not write {name}"
    assert _listing() == before, f"{script} changed the repository"
