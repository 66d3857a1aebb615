"""Trains the sample models on scikit-learn's digits and exports them to ONNX.

Run from the repository root (needs ``torch`` and ``scikit-learn``, imported after ``--help``)::

    python -m tools.samples.make_sample_models

Writes into ``sample_models/``:

* ``digits_calib.npz`` and ``digits_test.npz``: keys ``input`` (float32,
  (N, 1, 16, 16)) and ``labels`` (int64, (N,)).
* ``<name>_fused.onnx``: legacy TorchScript exporter with its defaults, which
  folds every BatchNorm into the preceding Conv.
* ``<name>_bn.onnx``: legacy exporter with constant folding off, which keeps
  one BatchNormalization node per ``BatchNorm2d``.
* ``<name>_fused_dynamo.onnx``: the torch.export-based exporter with its
  defaults (its graph optimizer folds BatchNorm too).

``_torch_models.load_torch_model`` reads the trained PyTorch module back from
``<name>_bn.onnx``, whose initializers carry the ``state_dict`` names.

Everything is seeded and the output is byte-for-byte reproducible; the run
takes about 90 s on an idle two-core machine.
"""

from __future__ import annotations

import argparse
import collections
import math
import random
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort

from tools.samples.sample_models import INPUT_SIZE, MODEL_NAMES, SAMPLE_MODELS_DIR

if TYPE_CHECKING:
    import torch
    from torch import nn

SEED = 0
TEST_SIZE = 500
CALIB_SIZE = 512
EPOCHS = 60
BATCH_SIZE = 32
LEARNING_RATE = 0.05
WEIGHT_DECAY = 5e-4
MAX_ROTATION_DEG = 12.0
MAX_SCALE_CHANGE = 0.1
MAX_SHIFT_PIXELS = 1.5
LEGACY_OPSET = 17
EXPORT_TOLERANCE = 1e-4
MAX_ONNX_BYTES = 400_000
MAX_WRITTEN_BYTES = 5_000_000
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def seed_everything(seed: int) -> None:
    """Seeds Python, numpy and torch and asks torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def load_images() -> tuple[np.ndarray, np.ndarray]:
    """Loads the digits as float32 images in [0, 1], upsampled to 16x16.

    Returns:
        ``(images, labels)`` with shapes (1797, 1, 16, 16) and (1797,).
    """
    digits = load_digits()
    pixels = torch.from_numpy((digits.images / 16.0).astype(np.float32)).unsqueeze(1)
    # Bilinear interpolation is a convex combination, so values stay in [0, 1].
    images = F.interpolate(pixels, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return images.numpy(), digits.target.astype(np.int64)


def split_indices(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Splits sample indices into disjoint, stratified train/calib/test sets.

    Args:
        labels: Class of every sample.
        seed: Seed of both stratified shuffles.

    Returns:
        Sorted index arrays under the keys ``train``, ``calib`` and ``test``.
    """
    indices = np.arange(len(labels))
    rest, test = train_test_split(indices, test_size=TEST_SIZE, stratify=labels, random_state=seed)
    train, calib = train_test_split(rest, test_size=CALIB_SIZE, stratify=labels[rest], random_state=seed)
    return {"train": np.sort(train), "calib": np.sort(calib), "test": np.sort(test)}


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Applies a random rotation, scaling and shift to every image.

    Args:
        images: Batch of shape (N, 1, H, W).
        generator: Source of the random transform parameters.

    Returns:
        The transformed batch, same shape; pixels moved in from outside are 0.
    """
    n = images.shape[0]

    def uniform(limit: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * 2 - 1) * limit

    angle = uniform(math.radians(MAX_ROTATION_DEG))
    scale = 1 + uniform(MAX_SCALE_CHANGE)
    # affine_grid works in [-1, 1] coordinates, where one pixel is 2 / size.
    shift = torch.stack([uniform(MAX_SHIFT_PIXELS), uniform(MAX_SHIFT_PIXELS)], dim=1) * 2 / INPUT_SIZE
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    theta = torch.cat([theta, shift.unsqueeze(2)], dim=2)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def train(model: nn.Module, images: np.ndarray, labels: np.ndarray, seed: int) -> nn.Module:
    """Trains a model with Nesterov SGD, cosine learning rate and augmentation.

    Args:
        model: Freshly built model.
        images: Training images (N, 1, H, W).
        labels: Training labels (N,).
        seed: Seed of the batch order and of the augmentation.

    Returns:
        The trained model, in eval mode.
    """
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    steps_per_epoch = math.ceil(len(x) / BATCH_SIZE)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=LEARNING_RATE, momentum=0.9, nesterov=True, weight_decay=WEIGHT_DECAY
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS * steps_per_epoch)
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(x), generator=generator)
        for step in range(steps_per_epoch):
            batch = order[step * BATCH_SIZE : (step + 1) * BATCH_SIZE]
            loss = F.cross_entropy(model(augment(x[batch], generator)), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    return model.eval()


def export_legacy(model: nn.Module, example: torch.Tensor, path: Path, keep_batchnorm: bool) -> None:
    """Exports with the TorchScript-based exporter, batch dimension dynamic.

    Args:
        model: Model in eval mode.
        example: Example input used for tracing.
        path: Destination ``.onnx`` file.
        keep_batchnorm: Turn constant folding off, which also skips the
            exporter's folding of BatchNorm into Conv.
    """
    # The legacy exporter is chosen on purpose: it is the one that folds BatchNorm.
    warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export")
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=LEGACY_OPSET,
        do_constant_folding=not keep_batchnorm,
    )


def export_dynamo(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Exports with the torch.export-based exporter and its default opset.

    The weights are stored inside the file (``external_data=False``) so that
    every sample is a single file, and per-node debug metadata is dropped; the
    other options keep their defaults.

    Args:
        model: Model in eval mode.
        example: Example input used for tracing.
        path: Destination ``.onnx`` file.
    """
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        external_data=False,
    )
    # The exporter stamps every node with stack-trace metadata holding absolute paths of this
    # checkout: a quarter of the file, and different per machine. The graph is untouched.
    exported = onnx.load(str(path))
    for node in exported.graph.node:
        del node.metadata_props[:]
    onnx.save(exported, str(path))


def run_onnx(path: Path, images: np.ndarray) -> np.ndarray:
    """Returns the logits of an ONNX model for a batch of images."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]


def count_ops(path: Path) -> collections.Counter:
    """Counts the nodes of each op type in an ONNX model."""
    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def check_export(path: Path, model: nn.Module, images: np.ndarray, expected_batchnorms: int) -> float:
    """Checks an exported model against PyTorch and its BatchNorm count.

    Args:
        path: Exported model.
        model: The PyTorch model it came from, in eval mode.
        images: Inputs to compare on.
        expected_batchnorms: Number of BatchNormalization nodes it must have.

    Returns:
        The largest absolute difference between the two sets of logits.

    Raises:
        RuntimeError: If the model is invalid, too large, has the wrong number
            of BatchNormalization nodes or disagrees with PyTorch.
    """
    onnx.checker.check_model(str(path), full_check=True)
    size = path.stat().st_size
    if size > MAX_ONNX_BYTES:
        raise RuntimeError(f"{path.name} is {size} bytes, over the {MAX_ONNX_BYTES}-byte budget")
    batchnorms = count_ops(path)["BatchNormalization"]
    if batchnorms != expected_batchnorms:
        raise RuntimeError(f"{path.name} has {batchnorms} BatchNormalization nodes, expected {expected_batchnorms}")
    with torch.no_grad():
        reference = model(torch.from_numpy(images)).numpy()
    max_diff = float(np.max(np.abs(run_onnx(path, images) - reference)))
    if max_diff > EXPORT_TOLERANCE:
        raise RuntimeError(f"{path.name} differs from PyTorch by {max_diff:.2e} > {EXPORT_TOLERANCE:.0e}")
    return max_diff


def export_all(name: str, model: nn.Module, check_images: np.ndarray, out_dir: Path) -> list[Path]:
    """Exports one trained model in the three flavours and checks each file.

    Args:
        name: Model name, the prefix of the file names.
        model: Trained model in eval mode.
        check_images: Images to compare ONNX Runtime and PyTorch on.
        out_dir: Destination folder.

    Returns:
        The paths of the files written.
    """
    example = torch.from_numpy(check_images[:2])
    num_batchnorms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    flavours = [
        (f"{name}_fused.onnx", lambda p: export_legacy(model, example, p, keep_batchnorm=False), 0),
        (f"{name}_bn.onnx", lambda p: export_legacy(model, example, p, keep_batchnorm=True), num_batchnorms),
        (f"{name}_fused_dynamo.onnx", lambda p: export_dynamo(model, example, p), 0),
    ]
    paths = []
    for file_name, export, expected_batchnorms in flavours:
        path = out_dir / file_name
        export(path)
        max_diff = check_export(path, model, check_images, expected_batchnorms)
        print(f"  {file_name}: max |onnxruntime - torch| = {max_diff:.2e}")
        paths.append(path)
    return paths


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Returns the top-1 accuracy of logits against integer labels."""
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def print_table(rows: list[tuple[str, Path, float]]) -> None:
    """Prints model, file, size, Conv and BatchNormalization counts, accuracy."""
    header = f"{'model':<10} {'file':<28} {'size kB':>8} {'#Conv':>6} {'#BN':>4} {'test acc':>9}"
    print(header)
    print("-" * len(header))
    for name, path, acc in rows:
        ops = count_ops(path)
        print(
            f"{name:<10} {path.name:<28} {path.stat().st_size / 1000:>8.1f} "
            f"{ops['Conv']:>6} {ops['BatchNormalization']:>4} {acc:>9.2%}"
        )


def _import_training_stack() -> None:
    """PyTorch and scikit-learn, imported once the arguments are read (``--help`` needs neither)."""
    global F, build_model, load_digits, nn, torch, train_test_split  # the functions above use them
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch import nn

    from tools.samples._torch_models import build_model


def main(argv=None) -> None:
    """Builds the data sets, trains, exports and reports every sample model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=SAMPLE_MODELS_DIR, help="destination folder")
    args = parser.parse_args(argv)
    _import_training_stack()
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    seed_everything(SEED)
    images, labels = load_images()
    splits = split_indices(labels, SEED)
    print("split sizes: " + ", ".join(f"{k}={len(v)}" for k, v in splits.items()))
    written = []
    for split in ("calib", "test"):
        idx = splits[split]
        written.append(out_dir / f"digits_{split}.npz")
        np.savez_compressed(written[-1], input=images[idx], labels=labels[idx])
    test_images, test_labels = images[splits["test"]], labels[splits["test"]]

    rows = []
    for model_index, name in enumerate(MODEL_NAMES):
        torch.manual_seed(SEED + model_index)
        model = build_model(name)
        num_params = sum(p.numel() for p in model.parameters())
        start = time.perf_counter()
        model = train(model, images[splits["train"]], labels[splits["train"]], SEED + model_index)
        with torch.no_grad():
            torch_acc = accuracy(model(torch.from_numpy(test_images)).numpy(), test_labels)
        print(
            f"{name}: {num_params} parameters, trained in {time.perf_counter() - start:.0f} s, "
            f"torch test accuracy {torch_acc:.2%}"
        )
        for path in export_all(name, model, test_images, out_dir):
            written.append(path)
            rows.append((name, path, accuracy(run_onnx(path, test_images), test_labels)))

    print()
    print_table(rows)
    # Only this script's files count: other tools add their own samples to the folder.
    total = sum(path.stat().st_size for path in written)
    print(f"\n{len(written)} files written, {total / 1000:.1f} kB in total")
    if total > MAX_WRITTEN_BYTES:
        raise RuntimeError(f"the files written take {total} bytes, over the {MAX_WRITTEN_BYTES}-byte budget")


if __name__ == "__main__":
    main()
