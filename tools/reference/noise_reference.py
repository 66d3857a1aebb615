"""Reference accuracies under the paper's weight noise, computed without nabn_onnx.

For each sample model and noise level this prints three test accuracies:

* ``onnx``: the noise drawn with numpy onto every Conv, Gemm and MatMul weight
  initializer of ``<name>_<variant>.onnx`` (biases untouched), run by onnxruntime.
* ``torch``: the same draws (same generator, same tensor order and shapes)
  onto every ``Conv2d`` and ``Linear`` weight of the trained PyTorch model.
* ``torch+NaBN``: that noisy PyTorch model after BatchNorm recalibration in
  train mode on ``digits_calib.npz``: running statistics reset, cumulative
  averaging (``momentum=None``), every calibration batch forwarded once.

Noise follows the paper, with N_T and N_S both drawn once per weight element:
MUL ``W + W * N_T * N_S`` and ADD ``W + N_T * N_S``, where
``N_T ~ N(eta, (0.2 eta)^2)`` and ``N_S ~ N(1, 0.1^2)``.

MUL noise commutes with folding BatchNorm into the Conv (it scales each
element), so ``onnx`` on the ``fused`` files equals ``torch``. ADD noise does
not: the fused weight is ``W * gamma / sigma``, so use ``--variant bn`` for the
ONNX column to match the paper, where noise hits the unfused conv weights.

Run from the repository root after ``make_sample_models``; needs PyPI's ``torch`` (imported
after ``--help``)::

    python -m tools.reference.noise_reference
    python -m tools.reference.noise_reference --kind add --etas 0.005 0.01 0.02 --variant bn
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from tools.samples.sample_models import MODEL_NAMES, SAMPLE_MODELS_DIR

if TYPE_CHECKING:
    import torch
    from torch import nn

SIGMA_T_RATIO = 0.2
SIGMA_S = 0.1
CALIB_BATCH_SIZE = 64
DEFAULT_ETAS = {"mul": (0.02, 0.05, 0.1, 0.2, 0.3, 0.5), "add": (0.002, 0.005, 0.01, 0.02, 0.05)}
WEIGHT_OPS = {"Conv": (1,), "Gemm": (1,), "MatMul": (0, 1)}


def noisy(weight: np.ndarray, kind: str, eta: float, rng: np.random.Generator) -> np.ndarray:
    """Returns ``weight`` with the paper's MUL or ADD noise applied.

    Args:
        weight: Clean float32 weight tensor.
        kind: ``"mul"`` for ``W + W*N_T*N_S`` or ``"add"`` for ``W + N_T*N_S``.
        eta: Noise scale, the mean of N_T.
        rng: Generator; N_T then N_S are drawn for every element.

    Returns:
        The noisy tensor, float32, same shape.
    """
    n_t = rng.normal(eta, SIGMA_T_RATIO * eta, size=weight.shape)
    n_s = rng.normal(1.0, SIGMA_S, size=weight.shape)
    noise = n_t * n_s
    if kind == "mul":
        noise = noise * weight
    return (weight + noise).astype(np.float32)


def weight_initializers(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Returns the weight initializers of Conv, Gemm and MatMul nodes, in node order."""
    by_name = {t.name: t for t in model.graph.initializer}
    found: dict[str, onnx.TensorProto] = {}
    for node in model.graph.node:
        for index in WEIGHT_OPS.get(node.op_type, ()):
            if index < len(node.input) and node.input[index] in by_name:
                found.setdefault(node.input[index], by_name[node.input[index]])
    return list(found.values())


def onnx_accuracy(path: Path, kind: str, eta: float, seed: int, images: np.ndarray, labels: np.ndarray) -> float:
    """Test accuracy of an ONNX model with noise on its weight initializers."""
    model = onnx.load(str(path))
    rng = np.random.default_rng(seed)
    for tensor in weight_initializers(model):
        tensor.CopyFrom(numpy_helper.from_array(noisy(numpy_helper.to_array(tensor), kind, eta, rng), tensor.name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    logits = session.run(None, {input_name: images})[0]
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def inject_torch_noise(model: nn.Module, kind: str, eta: float, seed: int) -> nn.Module:
    """Returns a copy of ``model`` with noise on every Conv2d and Linear weight."""
    import torch
    from torch import nn

    model = copy.deepcopy(model)
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.copy_(torch.from_numpy(noisy(module.weight.numpy(), kind, eta, rng)))
    return model


def batches(images: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    """Yields consecutive batches of ``images`` as tensors."""
    import torch

    for start in range(0, len(images), batch_size):
        yield torch.from_numpy(images[start : start + batch_size])


def recalibrate_batchnorm(model: nn.Module, calib_images: np.ndarray) -> nn.Module:
    """Re-estimates every BatchNorm's running statistics in train mode, in place.

    Args:
        model: Model whose BatchNorm statistics are replaced.
        calib_images: Calibration images, forwarded once in batches of 64.

    Returns:
        The same model, in eval mode.
    """
    import torch
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for batch in batches(calib_images, CALIB_BATCH_SIZE):
            model(batch)
    return model.eval()


def torch_accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Test accuracy of a PyTorch model in eval mode."""
    import torch

    with torch.no_grad():
        logits = model(torch.from_numpy(images)).numpy()
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def main(argv=None) -> None:
    """Prints the accuracy table for the chosen noise kind and levels."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("mul", "add"), default="mul")
    parser.add_argument("--etas", type=float, nargs="+", help="noise scales (default depends on --kind)")
    parser.add_argument("--variant", choices=("fused", "bn", "fused_dynamo"), default="fused")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models-dir", type=Path, default=SAMPLE_MODELS_DIR)
    args = parser.parse_args(argv)
    etas = args.etas or DEFAULT_ETAS[args.kind]
    from tools.samples._torch_models import load_torch_model

    test = np.load(args.models_dir / "digits_test.npz")
    calib = np.load(args.models_dir / "digits_calib.npz")
    images, labels = test["input"], test["labels"]

    print(f"{args.kind.upper()} noise, seed {args.seed}, ONNX variant {args.variant}")
    print(f"{'model':<10} {'eta':>7} {'onnx':>7} {'torch':>7} {'torch+NaBN':>11}")
    for name in MODEL_NAMES:
        model = load_torch_model(name, args.models_dir)
        path = args.models_dir / f"{name}_{args.variant}.onnx"
        # eta = 0 draws exactly zero noise: the clean row, with recalibration on clean weights.
        for eta in (0.0, *etas):
            noisy_model = inject_torch_noise(model, args.kind, eta, args.seed)
            vanilla = torch_accuracy(noisy_model, images, labels)
            recalibrated = torch_accuracy(recalibrate_batchnorm(noisy_model, calib["input"]), images, labels)
            onnx_acc = onnx_accuracy(path, args.kind, eta, args.seed, images, labels)
            print(f"{name:<10} {eta:>7g} {onnx_acc:>7.1%} {vanilla:>7.1%} {recalibrated:>11.1%}")


if __name__ == "__main__":
    main()
