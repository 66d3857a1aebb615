"""What taking and returning an onnx_graphsurgeon.Graph costs, on a ResNet-50-sized model.

Builds the folded ResNet-50 of ``tools/bench/bench_large.py`` (``tests/builders.py``) (25.5 M parameters, 97 MiB of
float32 weights) and runs each step in its own Python process. The model is loaded
(``onnx.load``; for the graph steps also ``gs.import_onnx``) before the clock starts; then
the process's peak-RSS mark is reset (``/proc/self/clear_refs``) and the step runs, so
"extra peak" is the memory the step itself adds on top of what the caller already holds:

* ``gs.export_onnx`` / ``gs.import_onnx``: onnx-graphsurgeon's own conversions;
* ``to_model`` / ``from_model``: ours (:mod:`nabn_onnx.model.gsgraph`, the same plus the fields line);
* ``split`` and ``inject`` on the ``ModelProto`` and on the ``gs.Graph`` (the public calls copy
  a ``ModelProto`` input once, so both paths pay one copy of the weights).

Usage::

    python -m tools.bench.bench_graphsurgeon            # about 1 minute
    python -m tools.bench.bench_graphsurgeon --width 0.5 --repeat 3 [--steps 'to_model,split gs.Graph']
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.builders import build_resnet50, weight_bytes

_ROOT = Path(__file__).resolve().parents[2]

STEPS = (
    "gs.export_onnx",
    "to_model",
    "gs.import_onnx",
    "from_model",
    "split ModelProto",
    "split gs.Graph",
    "inject ModelProto",
    "inject gs.Graph",
)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _child(step: str, model_path: str) -> None:
    import onnx
    import onnx_graphsurgeon as gs

    import nabn_onnx as nb
    from nabn_onnx.model import from_model, to_model

    proto = onnx.load(model_path)
    graph = gs.import_onnx(proto)  # lazy: holds no copy of the weights (measured: gs.import_onnx)
    noise = nb.make_noise("mul", 0.05, seed=1)
    actions = {
        "gs.export_onnx": lambda: gs.export_onnx(graph),
        "to_model": lambda: to_model(graph),
        "gs.import_onnx": lambda: gs.import_onnx(proto),
        "from_model": lambda: from_model(proto, like=graph),  # `like` only says which kind
        "split ModelProto": lambda: nb.split(proto),
        "split gs.Graph": lambda: nb.split(graph),
        "inject ModelProto": lambda: nb.inject(proto, noise),
        "inject gs.Graph": lambda: nb.inject(graph, noise),
    }
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak-RSS mark: the step's own peak from here
    before = _status_kb("VmRSS")
    started = time.perf_counter()
    result = actions[step]()
    seconds = time.perf_counter() - started
    extra = _status_kb("VmHWM") - before
    del result
    print(json.dumps({"seconds": seconds, "extra_kb": extra}))


def run_step(step: str, model: Path) -> dict:
    cmd = [sys.executable, "-m", "tools.bench.bench_graphsurgeon", "--child", step, str(model)]
    env = dict(os.environ, PYTHONPATH=str(_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"step {step} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier (1.0 = ResNet-50)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per step; the fastest and lowest are kept")
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of the steps (default: all)")
    parser.add_argument("--child", nargs=2, metavar=("STEP", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0
    import onnx
    import onnx_graphsurgeon as gs

    steps = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        parser.error(f"unknown steps {unknown}; choose from {', '.join(STEPS)}")
    folder = Path(tempfile.mkdtemp(prefix="nabn-bench-gs-"))
    try:
        model = build_resnet50(0, width=args.width)
        weights = weight_bytes(model)
        path = folder / "resnet50.onnx"
        onnx.save_model(model, str(path))
        del model
        print(
            f"model: ResNet-50 (width {args.width}), {weights / 2**20:.1f} MiB of float32 weights; "
            f"onnx-graphsurgeon {gs.__version__}, onnx {onnx.__version__}"
        )
        results = {}
        for step in steps:
            runs = [run_step(step, path) for _ in range(max(1, args.repeat))]
            results[step] = (min(r["seconds"] for r in runs), min(r["extra_kb"] for r in runs) * 1024)
        print(f"\n{'step':18} {'time s':>7} {'extra peak MiB':>15} {'extra/W':>8}")
        for step, (sec, extra) in results.items():
            print(f"{step:18} {sec:7.2f} {extra / 2**20:15.0f} {extra / weights:8.2f}")
        for call in ("split", "inject"):
            if f"{call} ModelProto" not in results or f"{call} gs.Graph" not in results:
                continue
            proto_s, proto_m = results[f"{call} ModelProto"]
            gs_s, gs_m = results[f"{call} gs.Graph"]
            print(
                f"{call}: gs.Graph / ModelProto = {gs_s / proto_s:.2f}x time, "
                f"{gs_m / max(proto_m, 1):.2f}x extra peak ({(gs_m - proto_m) / 2**20:+.0f} MiB)"
            )
        print("\nextra peak: RSS high-water during the step minus RSS before it; W: weight bytes.")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
