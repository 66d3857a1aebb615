"""Time and peak memory of split / inject / calibrate on a ResNet-50-sized model.

Builds a ResNet-50 (25.5 M parameters, about 100 MB of float32 weights; BatchNorm folded
into the convolutions as exporters leave it; seeded He-initialized weights) with
``onnx.helper``, saves it twice (inline, and with external data), and runs each step in its
own Python process so every peak is that step's own:

* ``baseline``: ``onnx.load`` + ``onnx.save`` (external data kept external);
* ``split``, ``inject`` and ``calibrate`` (with ``--noise``): ``nabn-onnx`` through
  ``nabn_onnx.cli.main``; calibration data is 4 batches of 8 images at 64x64;
* ``idle``: the same imports and nothing else, the interpreter's own footprint.

Time is the step's wall time inside its process (imports excluded); peak memory is the
process's RSS high-water mark (``VmHWM``). It prints, per format, the time ratio to the
baseline and peak / weights, both raw and net of the idle footprint. Targets: time <= 2x
the baseline, peak <= 3x the weights for split and inject (calibrate also runs onnxruntime,
and is reported).

Usage::

    python -m tools.bench.bench_large                 # about 1-2 minutes
    python -m tools.bench.bench_large --steps split --formats external --keep /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from tests.builders import build_resnet50, weight_bytes

_ROOT = Path(__file__).resolve().parents[2]
STEPS = ("idle", "baseline", "split", "inject", "calibrate")
FORMATS = ("inline", "external")
IMAGE = 64
CALIB_BATCHES, CALIB_BATCH = 4, 8


def write_models(folder: Path, seed: int = 0, width: float = 1.0) -> Tuple[Dict[str, Path], int, Path]:
    """Save the model inline and with external data, and the calibration data; returns paths and weight bytes."""
    import onnx

    model = build_resnet50(seed, width=width)
    weights = weight_bytes(model)
    paths = {"inline": folder / "inline" / "resnet50.onnx", "external": folder / "external" / "resnet50.onnx"}
    for fmt, path in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "inline":
            onnx.save_model(model, str(path))
        else:
            onnx.save_model(
                model,
                str(path),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location="resnet50.onnx.data",
                size_threshold=1024,
            )
            # onnx.save_model moved the tensors out of `model`; it is not used again.
    data = folder / "calib.npz"
    rng = np.random.default_rng(seed + 1)
    np.savez(data, input=rng.uniform(0, 1, (CALIB_BATCHES * CALIB_BATCH, 3, IMAGE, IMAGE)).astype(np.float32))
    return paths, weights, data


# --------------------------------------------------------------------------- one step, in a child process


def _peak_kb() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _child(step: str, model: str, out: str, data: str, fmt: str) -> None:
    import onnx
    import onnxruntime  # noqa: F401 - every step pays the same imports

    from nabn_onnx.cli import main

    started = time.perf_counter()
    if step == "baseline":
        proto = onnx.load_model(model)
        if fmt == "external":
            onnx.save_model(
                proto,
                out,
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=Path(out).name + ".data",
                size_threshold=1024,
            )
        else:
            onnx.save_model(proto, out)
    elif step == "split":
        code = main(["split", model, "-o", out, "-q"])
    elif step == "inject":
        code = main(["inject", model, "--noise", "mul", "--eta", "0.05", "--seed", "1", "-o", out, "-q"])
    elif step == "calibrate":
        code = main(
            [
                "calibrate",
                model,
                "--data",
                data,
                "--noise",
                "mul",
                "--eta",
                "0.05",
                "--seed",
                "1",
                "--batch-size",
                str(CALIB_BATCH),
                "-o",
                out,
                "-q",
            ]
        )
    if step in ("split", "inject", "calibrate") and code != 0:
        raise SystemExit(f"{step} failed with exit code {code}")
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_kb": _peak_kb()}))


def run_step(step: str, fmt: str, model: Path, data: Path, out_dir: Path) -> Dict[str, float]:
    out = out_dir / f"{step}.onnx"
    cmd = [sys.executable, "-m", "tools.bench.bench_large", "--child", step, str(model), str(out), str(data), fmt]
    env = dict(os.environ, PYTHONPATH=str(_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"step {step} ({fmt}) failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall"] = wall
    for path in out_dir.glob(f"{step}.onnx*"):
        path.unlink()
    return result


# --------------------------------------------------------------------------- report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--formats", default=",".join(FORMATS), help="inline,external")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per step; the fastest time and lowest peak are kept"
    )
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier (1.0 = ResNet-50)")
    parser.add_argument("--keep", metavar="DIR", help="build in DIR and keep it (default: a temporary folder)")
    parser.add_argument("--child", nargs=5, metavar=("STEP", "MODEL", "OUT", "DATA", "FORMAT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0

    steps = [s for s in args.steps.split(",") if s]
    if "idle" not in steps:
        steps.insert(0, "idle")
    if "baseline" not in steps:
        steps.insert(1, "baseline")
    formats = [f for f in args.formats.split(",") if f]
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="nabn-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        paths, weights, data = write_models(folder, width=args.width)
        print(
            f"model: ResNet-50 (width {args.width}), {weights / 2**20:.1f} MiB of float32 weights "
            f"({weights // 4 / 1e6:.1f} M parameters), built and saved in {time.perf_counter() - started:.1f}s"
        )
        print(f"calibration data: {CALIB_BATCHES} batches of {CALIB_BATCH} at {IMAGE}x{IMAGE}")
        out_dir = folder / "out"
        out_dir.mkdir(exist_ok=True)
        rows: List[Tuple] = []
        for fmt in formats:
            results = {}
            for step in steps:
                runs = [run_step(step, fmt, paths[fmt], data, out_dir) for _ in range(max(1, args.repeat))]
                results[step] = {"seconds": min(r["seconds"] for r in runs), "peak_kb": min(r["peak_kb"] for r in runs)}
            idle_mb = results["idle"]["peak_kb"] / 1024
            base_s = results["baseline"]["seconds"]
            for step in steps:
                if step == "idle":
                    continue
                r = results[step]
                peak_mb = r["peak_kb"] / 1024
                rows.append(
                    (
                        fmt,
                        step,
                        r["seconds"],
                        r["seconds"] / base_s,
                        peak_mb,
                        peak_mb * 2**20 / weights,
                        (peak_mb - idle_mb) * 2**20 / weights,
                    )
                )
            rows.append((fmt, "idle", 0.0, 0.0, idle_mb, idle_mb * 2**20 / weights, 0.0))
        print()
        print(f"{'format':9} {'step':10} {'time s':>8} {'t/base':>7} {'peak MiB':>9} {'peak/W':>7} {'net/W':>7}")
        for fmt, step, sec, ratio, peak, pw, net in rows:
            flag = ""
            if step in ("split", "inject") and (ratio > 2.0 or pw > 3.0):
                flag = "  <-- misses a target"
            print(f"{fmt:9} {step:10} {sec:8.2f} {ratio:7.2f} {peak:9.0f} {pw:7.2f} {net:7.2f}{flag}")
        print("\nt/base: time / (onnx.load + onnx.save) of the same file; peak/W: RSS high-water / weight bytes;")
        print(
            "net/W: (peak - idle interpreter footprint) / weight bytes. Targets for split and inject: "
            "t/base <= 2, peak/W <= 3."
        )
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
