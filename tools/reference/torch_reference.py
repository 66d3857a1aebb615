"""Check calibrated statistics against PyTorch's train-mode BatchNorm recalibration.

For a sample model exported with BatchNorm kept, one simulated chip is written into the
ONNX weights by nabn-onnx; the same noisy weights are loaded into the PyTorch model,
whose BatchNorms are reset and recalibrated in train mode with ``momentum=None`` over the
same calibration batches. ``nabn_onnx.calibrate`` with the matching estimator (cumulative,
mean of unbiased batch variances) must give the same running statistics within 1e-4.

Usage::

    python -m tools.reference.torch_reference [--model resnet] [--noise mul --eta 0.1 --seed 0]

Needs PyTorch (``pip install torch``; imported after ``--help``) and the sample models.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

import numpy as np
from onnx import numpy_helper

import nabn_onnx as nb
from tools.samples.sample_models import SAMPLE_MODELS_DIR

if TYPE_CHECKING:
    import torch

#: The issue's acceptance bound on |ours - PyTorch|, relative to max(1, |PyTorch|).
TOLERANCE = 1e-4
#: The estimator that reproduces PyTorch's momentum=None recalibration.
TORCH_ESTIMATOR = nb.Estimator(kind="cumulative", variance="mean", unbiased=True)


def torch_recalibrate(model: torch.nn.Module, batches) -> float:
    """PyTorch's recipe: reset BatchNorm statistics, momentum=None, forward in train mode. Returns seconds."""
    import torch

    started = time.perf_counter()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for x in batches:
            model(torch.from_numpy(x))
    model.eval()
    return time.perf_counter() - started


def noisy_torch_model(name: str, noisy_onnx) -> torch.nn.Module:
    """The PyTorch sample model carrying the noisy weights of ``noisy_onnx`` (names match)."""
    import torch

    from tools.samples._torch_models import load_torch_model

    model = load_torch_model(name)
    state = model.state_dict()
    weights = {t.name: numpy_helper.to_array(t) for t in noisy_onnx.graph.initializer}
    for key in state:
        if key in weights and state[key].shape == weights[key].shape:
            state[key] = torch.from_numpy(weights[key].copy())
    model.load_state_dict(state)
    return model


def compare(name: str, noise: nb.NoiseModel, batch_size: int = 64) -> float:
    """Largest relative difference between our statistics and PyTorch's; prints a summary."""
    onnx_path = SAMPLE_MODELS_DIR / f"{name}_bn.onnx"
    calib = SAMPLE_MODELS_DIR / "digits_calib.npz"
    # exclude=".*": calibrate the model's own BatchNorms only, as PyTorch does (no split after the classifier)
    ours = nb.calibrate(onnx_path, calib, noise=noise, estimator=TORCH_ESTIMATOR, batch_size=batch_size, exclude=".*")
    noisy = nb.inject(onnx_path, noise).model
    model = noisy_torch_model(name, noisy)
    x = np.load(calib)["input"]
    batches = [x[i : i + batch_size] for i in range(0, len(x), batch_size) if len(x[i : i + batch_size]) > 1]
    torch_recalibrate(model, batches)
    state = model.state_dict()
    inits = {t.name: numpy_helper.to_array(t) for t in ours.model.graph.initializer}
    worst, count = 0.0, 0
    for node in ours.model.graph.node:
        if node.op_type != "BatchNormalization":
            continue
        for slot in (3, 4):
            key = node.input[slot]
            ref = state[key].numpy().astype(np.float64)
            got = inits[key].astype(np.float64)
            worst = max(worst, float(np.max(np.abs(got - ref) / np.maximum(1.0, np.abs(ref)))))
        count += 1
    verdict = "OK" if worst <= TOLERANCE else "FAIL"
    print(
        f"{name}: {count} BatchNorms, {noise.kind} eta={noise.eta:g} seed={noise.seed}: max |ours - PyTorch| / "
        f"max(1, |PyTorch|) = {worst:.2e} (bound {TOLERANCE:g}) {verdict}"
    )
    return worst


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", choices=["resnet", "mobilenet"])
    parser.add_argument("--noise", choices=["mul", "add"], default="mul")
    parser.add_argument("--eta", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    worst = 0.0
    for name in args.model or ["resnet", "mobilenet"]:
        if not (SAMPLE_MODELS_DIR / f"{name}_bn.onnx").exists():
            print(f"{name}: sample model missing, run python -m tools.samples.make_sample_models")
            continue
        for eta in (0.0, args.eta):
            worst = max(worst, compare(name, nb.make_noise(args.noise, eta, seed=args.seed)))
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
