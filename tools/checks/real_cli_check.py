"""Runs every real network through the CLI as a user would, and prints what each command said.

Needs the cache of ``tools/samples/make_real_models.py``. For each model: ``inspect``, ``split``
(with ``--data``), ``inject``, ``calibrate`` (with ``--test``), ``evaluate`` on the clean,
noisy and calibrated models, ``sweep`` (one eta, one chip) and ``diagnose``. Prints one
line per command: exit code, seconds, and the command's last output line (the error, if it
failed); writes the same as a markdown table with ``--report``. Outputs go to a temporary
folder. Small subsets (the first two batches of each data file) keep it to minutes::

    python -m tools.checks.real_cli_check [--only mobilenet,dbnet,layout] [--report docs/generated/results_real_cli.md]
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

from tools.samples.make_real_models import DEFAULT_CACHE

MODELS = {
    "mobilenet": dict(
        model="mobilenet_v2_fused.onnx",
        calib="mobilenet_calib.npz",
        test="mobilenet_test.npz",
        metric="top1",
        batch="64",
        batches="2",
    ),
    "mobilenet-bn": dict(
        model="mobilenet_v2_bn.onnx",
        calib="mobilenet_calib.npz",
        test="mobilenet_test.npz",
        metric="top1",
        batch="64",
        batches="2",
    ),
    "dbnet": dict(
        model="dbnet.onnx", calib="dbnet_calib.npz", test="dbnet_test.npz", metric="dbnet:miou", batch="8", batches="2"
    ),
    "layout": dict(
        model="layout_cdla.onnx",
        calib="layout_calib.npz",
        test="layout_test.npz",
        metric="picodet:map50",
        batch="4",
        batches="2",
    ),
}


def subset(source: Path, count: int, dest: Path) -> str:
    """The first ``count`` samples of an ``.npz`` (keeps the check to minutes on 2 cores)."""
    import numpy as np

    with np.load(source) as data:
        np.savez(dest, **{k: data[k][:count] for k in data.files})
    return str(dest)


def commands(name: str, cache: Path, out: Path) -> List[List[str]]:
    m = MODELS[name]
    count = int(m["batch"]) * int(m["batches"])
    model = str(cache / m["model"])
    calib = subset(cache / m["calib"], count, out / f"{name}.calib.npz")
    test = subset(cache / m["test"], count, out / f"{name}.test.npz")
    split, noisy, nabn = (
        str(out / f"{name}.split.onnx"),
        str(out / f"{name}.noisy.onnx"),
        str(out / f"{name}.nabn.onnx"),
    )
    size, few = ["--batch-size", m["batch"]], ["--max-batches", m["batches"]]
    noise = ["--noise", "mul", "--eta", "0.04", "--seed", "0"]
    return [
        ["inspect", model],
        ["split", model, "--data", calib, *size, "-o", split],
        ["inject", model, *noise, "-o", noisy],
        ["calibrate", model, "--data", calib, *noise, *size, *few, "--test", test, "--metric", m["metric"], "-o", nabn],
        ["evaluate", model, "--data", test, "--metric", m["metric"], *size, *few],
        ["evaluate", noisy, "--data", test, "--metric", m["metric"], *size, *few],
        ["evaluate", nabn, "--data", test, "--metric", m["metric"], *size, *few],
        [
            "calibrate",
            noisy,
            "--reference",
            model,
            "--data",
            calib,
            "--method",
            "paper",
            *size,
            *few,
            "-o",
            str(out / f"{name}.noisy.nabn.onnx"),
        ],
        [
            "sweep",
            model,
            "--calib",
            calib,
            "--test",
            test,
            "--noise",
            "add",
            "--eta",
            "0.0002",
            "--seeds",
            "1",
            "--metric",
            m["metric"],
            *size,
            "--max-batches",
            m["batches"],
        ],
        ["diagnose", model, "--data", calib, *noise, *size, *few],
    ]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--only", default=",".join(MODELS))
    parser.add_argument("--report", type=Path, help="also write the table here (.md)")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="nabn-cli-") as tmp:
        for name in [s.strip() for s in args.only.split(",") if s.strip()]:
            for argv_ in commands(name, args.cache, Path(tmp)):
                started = time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "nabn_onnx.cli", *argv_], capture_output=True, text=True)
                seconds = time.perf_counter() - started
                text = (done.stderr if done.returncode else done.stdout).strip().splitlines()
                last = text[-1] if text else ""
                shown = " ".join(shlex.quote(a.replace(str(args.cache), "$CACHE").replace(tmp, "$OUT")) for a in argv_)
                rows.append((name, shown, done.returncode, seconds, last.replace(tmp, "$OUT")))
                print(
                    f"[{name}] exit {done.returncode} {seconds:6.1f}s  nabn-onnx {shown}\n    -> {rows[-1][4]}",
                    flush=True,
                )
    if args.report:
        lines = ["| model | command | exit | s | last line |", "|---|---|---:|---:|---|"]
        lines += [
            f"| {n} | `nabn-onnx {c}` | {rc} | {s:.0f} | {last.replace('|', '/')} |" for n, c, rc, s, last in rows
        ]
        args.report.write_text("\n".join(lines) + "\n")
    return 1 if any(r[2] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
