"""Time and peak memory of every nabn-onnx command on real-sized networks, against plain inference.

For MobileNet-v2 at 224 (the real-networks models of ``tools/samples/make_real_models.py``: the fused
export, 256 calibration crops) and for the ResNet-50-sized model of ``tools/bench/bench_large.py``
(folded BatchNorm, seeded weights, 128 seeded random samples at 224), batch 64, one run
prints each command's wall time and peak memory as a ratio to one plain onnxruntime
inference pass over the same data:

* ``plain``: ``python`` + ``onnxruntime.InferenceSession(model)`` (default options), the
  ``.npz`` read with ``numpy.load``, every batch of 64 run: the baseline;
* ``calibrate`` of the fused model with ``--noise mul --eta 0.1 --seed 0``: default
  (``auto``), ``--method paper``, ``--method delta``;
* ``calibrate-images``: the default calibrate with the same crops as an image folder
  (320x320 JPEGs written from them, resized and center-cropped back to 224 with ImageNet's
  mean and std): what decoding adds to a calibration;
* ``split --data`` (the prepared model), ``calibrate prepared --method paper`` (Algorithm 1
  over a prepared model: one pass), ``inject prepared`` (the chip) and ``calibrate chip``
  (chip mode, Algorithm 1 only), ``inject`` of the fused model, ``evaluate chip`` (top-1 on
  the calibration data's labels) and ``diagnose`` (clean vs noisy vs calibrated
  activations, default method);
* on MobileNet-v2, PyTorch train-mode recalibration (``reset_running_stats``,
  ``momentum=None``, ``train()``, ``no_grad``) of the same chip: the torchvision
  architecture with the chip's noisy (fused) convolution weights and biases and a
  BatchNorm2d carrying each inserted BatchNorm's parameters; its running statistics are
  compared with ``nabn_onnx.calibrate(chip, method="paper")`` using the estimator that
  reproduces PyTorch (cumulative, mean of unbiased batch variances).

Every command runs in its own fresh process: seconds are the process's wall time (Python
start and imports included on both sides: whole commands), peak memory is its maximum
resident set size (``wait4``'s ``ru_maxrss``). Targets (issue 19): the default calibrate of
a fused model <= 5x the plain pass's time (goal 3x); ``--method paper`` <= 3x (goal 2x);
``split --data`` <= 1.5x; peak memory <= 1.5x the plain peak for every calibration and split
(issue 12's limit, 2.5x, for the rest).

Usage (``diagnose`` alone takes about 15 minutes on MobileNet-v2: it holds and histograms
every BatchNorm output of three models; ``--skip diagnose`` leaves it out, ``--samples 128``
halves the rest)::

    python -m tools.bench.bench_real_calibrate [--models mobilenet,resnet50] [--samples N]
        [--width 1.0] [--repeat 1] [--only plain,calibrate-auto,...] [--skip diagnose] [--markdown] [--json FILE]

The MobileNet-v2 files come from ``python -m tools.samples.make_real_models --only mobilenet``
(cache folder ``$NABN_REAL_CACHE`` or ``~/.cache/nabn-onnx/real``); without them that model
is skipped with a message.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("NABN_REAL_CACHE", Path.home() / ".cache" / "nabn-onnx" / "real"))
BATCH = 64
NOISE = ["--noise", "mul", "--eta", "0.1", "--seed", "0"]
#: Time ratio targets (issue 19): (limit, goal) per command.
TIME_TARGET = {
    "calibrate-auto": (5.0, 3.0),
    "calibrate-paper": (3.0, 2.0),
    "split-data": (1.5, 1.5),
    "calibrate-prepared": (1.5, 1.5),
    "calibrate-chip": (1.5, 1.5),
}
#: Peak memory ratio limits: issue 19's 1.5x for calibrations and split --data, issue 12's 2.5x otherwise.
MEMORY_TARGET, MEMORY_GOAL = 2.5, 1.5
MEMORY_TARGET_OF = dict.fromkeys(("calibrate-auto", "calibrate-paper", "calibrate-delta", "split-data"), 1.5)
#: The bound on |ours - PyTorch| / max(1, |PyTorch|) of tools/reference/torch_reference.py.
TORCH_TOLERANCE = 1e-4

#: ImageNet normalization (the crops of the real-model cache are normalized with it)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_OPTIONS = ["--crop", "224", "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD))]

PLAIN_SCRIPT = """
import sys, numpy as np, onnxruntime as ort
sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
with np.load(sys.argv[2]) as data:
    x = data["input"]
for i in range(0, len(x), int(sys.argv[3])):
    sess.run(None, {"input": x[i:i + int(sys.argv[3])]})
"""


@dataclass
class Row:
    command: str
    argv: str
    seconds: float
    peak_gb: float
    extra: str = ""


# --------------------------------------------------------------------------- models and data


def mobilenet_files(folder: Path, samples: int) -> Optional[Tuple[Path, Path]]:
    fused, calib = CACHE / "mobilenet_v2_fused.onnx", CACHE / "mobilenet_calib.npz"
    if not (fused.exists() and calib.exists()):
        print(f"mobilenet: {fused} or {calib} missing; run python -m tools.samples.make_real_models --only mobilenet")
        return None
    with np.load(calib) as data:
        n = len(data["input"])
        if samples >= n:
            return fused, calib
        small = folder / "mobilenet_calib.npz"
        np.savez(small, input=data["input"][:samples], labels=data["labels"][:samples])
    return fused, small


def resnet50_files(folder: Path, samples: int, width: float = 1.0) -> Tuple[Path, Path]:
    import onnx

    from tests.builders import build_resnet50

    path = folder / "resnet50_fused.onnx"
    onnx.save_model(build_resnet50(seed=0, width=width), str(path))
    rng = np.random.default_rng(1)
    data = folder / "resnet50_calib.npz"
    np.savez(
        data,
        input=rng.uniform(0, 1, (samples, 3, 224, 224)).astype(np.float32),
        labels=rng.integers(0, 1000, samples).astype(np.int64),
    )
    return path, data


# --------------------------------------------------------------------------- one command, in a fresh process


def _popen_wait4(argv: Sequence[str], env: Dict[str, str]) -> Tuple[float, float, str, str, int]:
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(list(argv), stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        return seconds, usage.ru_maxrss / 2**20, out.read().decode(), err.read().decode(), proc.returncode


def measure_command(argv: Sequence[str], env: Dict[str, str], repeat: int) -> Tuple[float, float, str]:
    """Fastest wall time and lowest peak RSS (GB) over ``repeat`` fresh processes, and the last stdout."""
    best_s, best_m, text = float("inf"), float("inf"), ""
    for _ in range(max(1, repeat)):
        seconds, peak, out, err, code = _popen_wait4(argv, env)
        if code != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({code}):\n{err[-3000:]}")
        best_s, best_m, text = min(best_s, seconds), min(best_m, peak), out
    return best_s, best_m, text


# --------------------------------------------------------------------------- PyTorch side


def torch_child(chip: str, data: str, batch: int) -> None:
    """In a fresh process: PyTorch recalibration of the chip, its peak, and the comparison with ours."""
    import onnx
    import torch
    from onnx import numpy_helper

    from tools.samples.make_real_models import mobilenet_v2

    model_proto = onnx.load(chip)
    inits = {t.name: numpy_helper.to_array(t) for t in model_proto.graph.initializer}
    consumers: Dict[str, list] = {}
    for node in model_proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    convs = [n for n in model_proto.graph.node if n.op_type == "Conv"]
    net = mobilenet_v2()
    modules = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    if len(modules) != len(convs):
        raise SystemExit(f"{len(convs)} ONNX Conv nodes against {len(modules)} torch Conv2d")
    pairs = []  # (torch BatchNorm2d, ONNX BatchNormalization node)
    with torch.no_grad():
        for module, node in zip(modules, convs):
            w = inits[node.input[1]]
            if tuple(module.weight.shape) != w.shape:
                raise SystemExit(f"shape mismatch at {node.name}: {tuple(module.weight.shape)} vs {w.shape}")
            module.weight.copy_(torch.from_numpy(w))
            module.bias = torch.nn.Parameter(torch.from_numpy(inits[node.input[2]].copy()))
            (bn_node,) = [c for c in consumers[node.output[0]] if c.op_type == "BatchNormalization"]
            pairs.append((module, bn_node))
        # every Conv2d of torchvision's MobileNet-v2 is followed by its BatchNorm2d: give it the inserted one's
        bns = {
            id(conv): bn for conv, bn in zip(modules, [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)])
        }
        for module, node in pairs:
            bn = bns[id(module)]
            bn.weight.copy_(torch.from_numpy(inits[node.input[1]]))
            bn.bias.copy_(torch.from_numpy(inits[node.input[2]]))
            bn.eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        fc = next(n for n in model_proto.graph.node if n.op_type == "Gemm")
        net.classifier[1].weight.copy_(torch.from_numpy(inits[fc.input[1]]))
        net.classifier[1].bias.copy_(torch.from_numpy(inits[fc.input[2]]))
    del model_proto, inits

    started = time.perf_counter()
    with np.load(data) as archive:
        x = archive["input"]
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    net.train()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            if len(x[i : i + batch]) > 1:
                net(torch.from_numpy(x[i : i + batch]))
    net.eval()
    seconds = time.perf_counter() - started
    peak_kb = _vm_hwm_kb()

    # ours, with the estimator that reproduces PyTorch's momentum=None recalibration
    import nabn_onnx as nb

    estimator = nb.Estimator(kind="cumulative", variance="mean", unbiased=True)
    ours = nb.calibrate(chip, data, method="paper", estimator=estimator, batch_size=batch).model
    got = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in ours.graph.initializer}
    worst = 0.0
    for module, node in pairs:
        bn = bns[id(module)]
        ours_node = next(n for n in ours.graph.node if n.name == node.name)
        for slot, ref in ((3, bn.running_mean), (4, bn.running_var)):
            assert ref is not None  # track_running_stats is on
            ref64 = ref.numpy().astype(np.float64)
            worst = max(
                worst, float(np.max(np.abs(got[ours_node.input[slot]] - ref64) / np.maximum(1.0, np.abs(ref64))))
            )
    print(json.dumps({"seconds": seconds, "peak_kb": peak_kb, "worst": worst, "bns": len(pairs)}))


def _vm_hwm_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


# --------------------------------------------------------------------------- the benchmark


def commands(model: Path, data: Path, work: Path, with_torch: bool) -> List[Tuple[str, List[str]]]:
    """``(name, argv)`` in the order they must run (later ones read earlier outputs)."""
    cli = [sys.executable, "-m", "nabn_onnx.cli"]
    prepared, chip, out = work / "prepared.onnx", work / "chip.onnx", work / "out.onnx"
    bs = ["--batch-size", str(BATCH)]
    rows = [
        ("plain", [sys.executable, str(work / "plain.py"), str(model), str(data), str(BATCH)]),
        ("calibrate-auto", [*cli, "calibrate", str(model), "--data", str(data), *NOISE, *bs, "-q", "-o", str(out)]),
        (
            "calibrate-paper",
            [
                *cli,
                "calibrate",
                str(model),
                "--data",
                str(data),
                *NOISE,
                "--method",
                "paper",
                *bs,
                "-q",
                "-o",
                str(out),
            ],
        ),
        (
            "calibrate-delta",
            [
                *cli,
                "calibrate",
                str(model),
                "--data",
                str(data),
                *NOISE,
                "--method",
                "delta",
                *bs,
                "-q",
                "-o",
                str(out),
            ],
        ),
        (
            "calibrate-images",
            [
                *cli,
                "calibrate",
                str(model),
                "--data",
                str(work / "images"),
                *IMAGE_OPTIONS,
                *NOISE,
                *bs,
                "-q",
                "-o",
                str(out),
            ],
        ),
        ("split-data", [*cli, "split", str(model), "--data", str(data), *bs, "-q", "-o", str(prepared)]),
        (
            "calibrate-prepared",
            [
                *cli,
                "calibrate",
                str(prepared),
                "--data",
                str(data),
                *NOISE,
                "--method",
                "paper",
                *bs,
                "-q",
                "-o",
                str(out),
            ],
        ),
        ("inject", [*cli, "inject", str(model), *NOISE, "-q", "-o", str(work / "chip_fused.onnx")]),
        ("inject-prepared", [*cli, "inject", str(prepared), *NOISE, "-q", "-o", str(chip)]),
        (
            "calibrate-chip",
            [*cli, "calibrate", str(chip), "--data", str(data), "--method", "paper", *bs, "-q", "-o", str(out)],
        ),
        ("evaluate", [*cli, "evaluate", str(chip), "--data", str(data), *bs, "-q"]),
        ("diagnose", [*cli, "diagnose", str(model), "--data", str(data), *NOISE, *bs, "-q"]),
    ]
    if with_torch:
        child = [sys.executable, "-m", "tools.bench.bench_real_calibrate", "--torch-child", str(chip), str(data)]
        rows.append(("pytorch", child))
    return rows


def write_images(data: Path, folder: Path) -> bool:
    """The calibration crops as 320x320 JPEGs in ``folder`` (so ``calibrate-images`` decodes, resizes and crops).

    False when Pillow is missing (the row is then skipped).
    """
    try:
        from PIL import Image
    except ImportError:
        return False
    folder.mkdir(exist_ok=True)
    with np.load(data) as arrays:
        crops = arrays["input"]
    mean, std = np.asarray(MEAN).reshape(3, 1, 1), np.asarray(STD).reshape(3, 1, 1)
    for i, crop in enumerate(crops):
        pixels = np.clip((crop * std + mean) * 255.0 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)
        Image.fromarray(pixels).resize((320, 320), Image.BILINEAR).save(folder / f"{i:04d}.jpg", quality=92)
    return True


def bench_model(
    label: str,
    model: Path,
    data: Path,
    folder: Path,
    repeat: int,
    only: Optional[set],
    skip: set,
    env: Dict[str, str],
) -> List[Row]:
    work = folder / label
    work.mkdir(exist_ok=True)
    (work / "plain.py").write_text(PLAIN_SCRIPT)
    rows: List[Row] = []
    needed = {"calibrate-prepared": "split-data", "inject-prepared": "split-data", "calibrate-chip": "inject-prepared"}
    needed.update({"evaluate": "inject-prepared", "pytorch": "inject-prepared"})
    selected = set(only) if only else None
    if selected is not None:
        selected.add("plain")
        for name in list(selected):
            while name in needed:
                name = needed[name]
                selected.add(name)
    for name, argv in commands(model, data, work, with_torch=label == "mobilenet"):
        if (selected is not None and name not in selected) or name in skip:
            continue
        if name == "calibrate-images" and not write_images(data, work / "images"):
            print(f"  {label}: {name} skipped (no Pillow: pip install nabn-onnx[images])", file=sys.stderr)
            continue
        print(f"  {label}: {name} ...", end="", flush=True, file=sys.stderr)
        if name == "pytorch":
            _, _, text = measure_command(argv, env, 1)
            result = json.loads(text.strip().splitlines()[-1])
            verdict = "OK" if result["worst"] <= TORCH_TOLERANCE else "DIFFERS"
            extra = (
                f"recalibration only; {result['bns']} BatchNorms, max |ours - PyTorch| / max(1, |PyTorch|) = "
                f"{result['worst']:.1e} {verdict}"
            )
            rows.append(
                Row(name, "torch train-mode, momentum=None", result["seconds"], result["peak_kb"] / 2**20, extra)
            )
        else:
            seconds, peak, _ = measure_command(argv, env, repeat)
            rows.append(Row(name, " ".join(argv[2:5]) if argv[1] == "-m" else "python plain.py", seconds, peak))
        print(f" {rows[-1].seconds:.1f}s {rows[-1].peak_gb:.2f} GB", file=sys.stderr)
    return rows


def verdicts(row: Row, base: Row) -> Tuple[str, str]:
    t_ratio, m_ratio = row.seconds / base.seconds, row.peak_gb / base.peak_gb
    time_v = ""
    if row.command in TIME_TARGET:
        limit, goal = TIME_TARGET[row.command]
        time_v = (
            f"<= {limit:g}x: "
            + ("PASS" if t_ratio <= limit else "FAIL")
            + (" (goal met)" if t_ratio <= goal and goal < limit else "")
        )
    mem_v = ""
    if row.command not in ("plain", "pytorch"):
        limit = MEMORY_TARGET_OF.get(row.command, MEMORY_TARGET)
        mem_v = f"<= {limit:g}x: " + ("PASS" if m_ratio <= limit else "FAIL")
        if m_ratio <= MEMORY_GOAL < limit:
            mem_v += " (goal met)"
    return time_v, mem_v


def print_table(label: str, rows: List[Row], markdown: bool) -> None:
    base = next(r for r in rows if r.command == "plain")
    if markdown:
        print(f"\n**{label}**\n")
        print("| command | seconds | x plain | time target | peak GB | x plain | memory target |")
        print("|---|---:|---:|---|---:|---:|---|")
        for row in rows:
            tv, mv = verdicts(row, base)
            print(
                f"| {row.command} | {row.seconds:.1f} | {row.seconds / base.seconds:.2f} | {tv} | "
                f"{row.peak_gb:.2f} | {row.peak_gb / base.peak_gb:.2f} | {mv} |"
            )
        for row in rows:
            if row.extra:
                print(f"\n{row.command}: {row.extra}")
        return
    print(f"\n{label}")
    print(
        f"{'command':20} {'seconds':>8} {'x plain':>8} {'time target':24} {'peak GB':>8} {'x plain':>8}  memory target"
    )
    for row in rows:
        tv, mv = verdicts(row, base)
        print(
            f"{row.command:20} {row.seconds:8.1f} {row.seconds / base.seconds:8.2f} {tv:24} "
            f"{row.peak_gb:8.2f} {row.peak_gb / base.peak_gb:8.2f}  {mv}"
        )
    for row in rows:
        if row.extra:
            print(f"  {row.command}: {row.extra}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet,resnet50", help="comma-separated: mobilenet, resnet50")
    parser.add_argument(
        "--samples", type=int, default=0, help="samples per model (default: 256 MobileNet, 128 ResNet-50)"
    )
    parser.add_argument("--width", type=float, default=1.0, help="ResNet-50's channel multiplier (smoke runs: 0.25)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per command; the fastest time and lowest peak kept")
    parser.add_argument("--only", help="comma-separated command names (plain and what they need always run)")
    parser.add_argument("--skip", default="", help="comma-separated command names not to run (e.g. diagnose)")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it")
    parser.add_argument("--torch-child", nargs=2, metavar=("CHIP", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.torch_child:
        torch_child(args.torch_child[0], args.torch_child[1], BATCH)
        return 0
    import onnxruntime as ort

    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="nabn-bench-real-"))
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    only = {s for s in args.only.split(",") if s} if args.only else None
    skip = {s for s in args.skip.split(",") if s} - {"plain"}
    results: Dict[str, List[Row]] = {}
    try:
        for label in [m for m in args.models.split(",") if m]:
            if label == "mobilenet":
                files = mobilenet_files(folder, args.samples or 256)
                if files is None:
                    continue
                title = f"MobileNet-v2 (fused export) at 224, {args.samples or 256} real crops, batch {BATCH}"
            elif label == "resnet50":
                files = resnet50_files(folder, args.samples or 128, args.width)
                title = (
                    f"ResNet-50-sized (tools/bench/bench_large.py, width {args.width:g}, folded) at 224, "
                    f"{args.samples or 128} samples, batch {BATCH}"
                )
            else:
                raise SystemExit(f"unknown model {label!r}")
            results[title] = bench_model(label, files[0], files[1], folder, args.repeat, only, skip, env)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print(
        f"onnxruntime {ort.__version__}, {os.cpu_count()} cores; every command a fresh process, wall time and "
        f"peak RSS; MUL eta=0.1 seed 0"
    )
    for title, rows in results.items():
        print_table(title, rows, args.markdown)
    if args.json:
        Path(args.json).write_text(json.dumps({t: [vars(r) for r in rows] for t, rows in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
