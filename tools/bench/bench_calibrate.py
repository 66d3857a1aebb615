"""Benchmark `calibrate` against plain onnxruntime inference and PyTorch, in one run.

Prints, on the same model and batches:

1. calibration time (Algorithm 1, ``method="paper"``; the default ``auto`` is timed too)
   / plain onnxruntime inference time (target <= 1.15), whole job
   included on both sides (load the model, read the .npz batch by batch, run; calibrate
   also splits, writes statistics and saves), in-process, median of repeats, for a model
   whose BatchNorms already hold reference statistics (one pass over the data) and for a
   fused model (a clean reference pass plus the calibration pass);
   and the same as whole `nabn-onnx calibrate` commands against a plain inference script;
2. PyTorch train-mode recalibration time / ours (target >= 1.3), same network and batches;
3. peak memory (max RSS of a `nabn-onnx calibrate` process) for N and 10N batches
   (target: grows < 10%).

Usage::

    python -m tools.bench.bench_calibrate [--batches 16] [--repeats 5] [--no-torch]

Parts 1d and 2 need PyTorch (``pip install torch``); ``--no-torch`` leaves them out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import nabn_onnx as nb

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"

BATCH = 64
NOISE = nb.make_noise("mul", 0.1, seed=0)
PLAIN_SCRIPT = """
import sys, zipfile, numpy as np, onnxruntime as ort
sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
with np.load(sys.argv[2]) as data:
    x = data["input"]
for i in range(0, len(x), {batch}):
    sess.run(None, {{"input": x[i:i + {batch}]}})
"""


def make_data(folder: Path, batches: int) -> Path:
    """An .npz of `batches` batches, tiled from the bundled calibration split."""
    x = np.load(SAMPLES / "digits_calib.npz")["input"]
    reps = -(-batches * BATCH // len(x))
    path = folder / f"calib_{batches}.npz"
    np.savez(path, input=np.concatenate([x] * reps)[: batches * BATCH])
    return path


def make_wide(folder: Path, batches: int):
    """A ResNet with 64/128/256 channels on 32x32 inputs, BatchNorm kept, seeded random weights."""
    import torch

    from tools.samples._torch_models import TinyResNet

    torch.manual_seed(0)
    net = TinyResNet(widths=(64, 128, 256), blocks_per_stage=2).eval()
    path = folder / "wide_bn.onnx"
    example = torch.zeros(1, 1, 32, 32)
    torch.onnx.export(
        net,
        example,
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}},
        do_constant_folding=False,
        opset_version=17,
    )
    x = np.random.default_rng(0).uniform(0, 1, (batches * BATCH, 1, 32, 32)).astype(np.float32)
    data = folder / "wide.npz"
    np.savez(data, input=x)
    return path, data, net, x


def plain_inference(model: Path, data: Path) -> float:
    """Seconds to load the model in onnxruntime and run every batch of the file."""
    started = time.perf_counter()
    # the library's session options and batch reader, so both sides differ only in what calibrate adds
    # (not public API: see tools/README.md, "Private names")
    from nabn_onnx.data import input_specs, iter_batches
    from nabn_onnx.runtime import make_session

    session = make_session(nb.load_model(model, check=False))
    specs = input_specs(nb.load_model(model, check=False))
    for batch in iter_batches(data, specs, batch_size=BATCH):
        session.run(None, batch.feeds)
    return time.perf_counter() - started


def ours(model: Path, data: Path, out: Path, method: str = "paper", **kwargs) -> float:
    """Seconds for one whole `calibrate` call (Algorithm 1 unless told otherwise)."""
    started = time.perf_counter()
    nb.calibrate(model, data, noise=NOISE, batch_size=BATCH, output=out, method=method, **kwargs)
    return time.perf_counter() - started


def median_pair(fn_a, fn_b, repeats: int):
    """Median times of two functions, run alternately so load on the machine hits both alike."""
    a, b = [], []
    for _ in range(repeats):
        a.append(fn_a())
        b.append(fn_b())
    return statistics.median(a), statistics.median(b)


def command_time(argv) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def peak_rss_mb(argv) -> float:
    """Max resident set size of one child process, in MB."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"{argv} failed")
    return usage.ru_maxrss / 1024.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=16, help="N (batches of 64) for the timing runs")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true", help="leave out 1d and 2 (they need PyTorch)")
    args = parser.parse_args(argv)
    bn_model, fused_model = SAMPLES / "resnet_bn.onnx", SAMPLES / "resnet_fused.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_data(tmp, args.batches)
        print(
            f"model: sample ResNet, {args.batches} batches of {BATCH}, MUL eta=0.1, onnxruntime {ort.__version__}, "
            f"{os.cpu_count()} cores"
        )

        # 1. calibrate / plain inference, in-process
        t_cal, t_inf = median_pair(
            lambda: ours(bn_model, data, tmp / "o.onnx", exclude=".*"),
            lambda: plain_inference(bn_model, data),
            args.repeats,
        )
        print(
            f"[1a] BatchNorm kept (1 pass):     calibrate {t_cal:.3f}s / inference {t_inf:.3f}s = "
            f"{t_cal / t_inf:.2f} (target <= 1.15)"
        )
        t_cal_f, t_inf_f = median_pair(
            lambda: ours(fused_model, data, tmp / "o.onnx"), lambda: plain_inference(fused_model, data), args.repeats
        )
        print(
            f"[1b] BatchNorm fused (2 passes):  calibrate {t_cal_f:.3f}s / inference {t_inf_f:.3f}s = "
            f"{t_cal_f / t_inf_f:.2f}"
        )
        t_auto, t_inf_a = median_pair(
            lambda: ours(fused_model, data, tmp / "o.onnx", method="auto"),
            lambda: plain_inference(fused_model, data),
            args.repeats,
        )
        print(
            f"[1e] BatchNorm fused, method auto (default): calibrate {t_auto:.3f}s / inference {t_inf_a:.3f}s = "
            f"{t_auto / t_inf_a:.2f}"
        )
        script = tmp / "plain.py"
        script.write_text(PLAIN_SCRIPT.format(batch=BATCH))
        cli = [
            sys.executable,
            "-m",
            "nabn_onnx.cli",
            "calibrate",
            str(bn_model),
            "--data",
            str(data),
            "--noise",
            "mul",
            "--eta",
            "0.1",
            "--exclude",
            ".*",
            "--method",
            "paper",
            "-q",
            "-o",
            str(tmp / "c.onnx"),
        ]
        t_cmd, t_plain = median_pair(
            lambda: command_time(cli),
            lambda: command_time([sys.executable, str(script), str(bn_model), str(data)]),
            args.repeats,
        )
        print(
            f"[1c] whole commands (BN kept):    nabn-onnx calibrate {t_cmd:.3f}s / python+onnxruntime inference "
            f"{t_plain:.3f}s = {t_cmd / t_plain:.2f}"
        )

        if not args.no_torch:  # 1d and 2 build and run the network in PyTorch
            # 1d. the same on a wider network (ResNet-18-like widths at 32x32), random weights
            wide_model, wide_data, wide_net, wide_x = make_wide(tmp, args.batches)
            t_cal_w, t_inf_w = median_pair(
                lambda: ours(wide_model, wide_data, tmp / "w.onnx", exclude=".*"),
                lambda: plain_inference(wide_model, wide_data),
                args.repeats,
            )
            print(
                f"[1d] wider ResNet (64/128/256 ch, 32x32, BN kept): calibrate {t_cal_w:.3f}s / inference "
                f"{t_inf_w:.3f}s = {t_cal_w / t_inf_w:.2f} (target <= 1.15)"
            )

            # 2. PyTorch train-mode recalibration / ours, same network, weights and batches
            from tools.reference.torch_reference import noisy_torch_model, torch_recalibrate

            noisy = nb.inject(bn_model, NOISE).model
            x = np.load(data)["input"]
            batches = [x[i : i + BATCH] for i in range(0, len(x), BATCH)]
            torch_model = noisy_torch_model("resnet", noisy)
            t_torch, t_ours = median_pair(
                lambda: torch_recalibrate(torch_model, batches),
                lambda: ours(bn_model, data, tmp / "o.onnx", exclude=".*"),
                args.repeats,
            )
            print(
                f"[2a] PyTorch train-mode recalibration {t_torch:.3f}s / ours {t_ours:.3f}s = {t_torch / t_ours:.2f} "
                f"(target >= 1.3)"
            )
            wide_batches = [wide_x[i : i + BATCH] for i in range(0, len(wide_x), BATCH)]
            t_torch_w, t_ours_w = median_pair(
                lambda: torch_recalibrate(wide_net, wide_batches),
                lambda: ours(wide_model, wide_data, tmp / "w.onnx", exclude=".*"),
                args.repeats,
            )
            print(
                f"[2b] wider ResNet: PyTorch {t_torch_w:.3f}s / ours {t_ours_w:.3f}s = {t_torch_w / t_ours_w:.2f} "
                f"(target >= 1.3)"
            )

        # 3. peak memory, N against 10N batches
        big = make_data(tmp, 10 * args.batches)
        base = [
            sys.executable,
            "-m",
            "nabn_onnx.cli",
            "calibrate",
            str(fused_model),
            "--noise",
            "mul",
            "--eta",
            "0.1",
            "-q",
            "-o",
            str(tmp / "m.onnx"),
            "--data",
        ]
        small_rss, big_rss = peak_rss_mb([*base, str(data)]), peak_rss_mb([*base, str(big)])
        print(
            f"[3]  peak RSS: {args.batches} batches {small_rss:.1f} MB, {10 * args.batches} batches {big_rss:.1f} MB"
            f" (data file {big.stat().st_size / 1e6:.1f} MB): growth {100 * (big_rss / small_rss - 1):+.1f}% "
            f"(target < 10%)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
