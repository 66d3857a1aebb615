"""PyTorch definitions of the sample models, shared by the tools scripts (imports torch).

``make_sample_models`` trains these classes and exports them to ONNX; other
scripts call :func:`load_torch_model` to get the trained network back as a
PyTorch reference, e.g. for BatchNorm recalibration in train mode.

Both networks follow torchvision's conventions: every convolution has
``bias=False`` and is followed by a ``BatchNorm2d``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tools.samples.sample_models import INPUT_SIZE, MODEL_NAMES, NUM_CLASSES, SAMPLE_MODELS_DIR

__all__ = [
    "INPUT_SIZE",
    "MODEL_NAMES",
    "NUM_CLASSES",
    "SAMPLE_MODELS_DIR",
    "TinyMobileNetV2",
    "TinyResNet",
    "build_model",
    "load_torch_model",
]


def _conv_bn(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    groups: int = 1,
) -> list[nn.Module]:
    """Returns a bias-free Conv2d with 'same' padding and its BatchNorm2d."""
    return [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
    ]


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN pairs and a residual connection.

    The shortcut is the identity, or a 1x1 conv-BN when the stride or the
    channel count changes.

    Args:
        in_channels: Channels of the block input.
        out_channels: Channels of the block output.
        stride: Stride of the first convolution and of the shortcut.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_channels, out_channels, 3, stride)
        self.conv2, self.bn2 = _conv_bn(out_channels, out_channels, 3)
        self.relu = nn.ReLU()
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(*_conv_bn(in_channels, out_channels, 1, stride))
        else:
            self.downsample = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies the block."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class TinyResNet(nn.Module):
    """CIFAR-style ResNet-20 topology at half width (8/16/32 channels).

    Stem conv3x3-BN-ReLU, three stages of basic blocks (the second and third
    halve the resolution), global average pooling and a linear classifier.

    Args:
        widths: Output channels of the three stages; the stem uses the first.
        blocks_per_stage: Number of basic blocks in each stage.
        num_classes: Number of output logits.
    """

    def __init__(
        self,
        widths: tuple[int, int, int] = (8, 16, 32),
        blocks_per_stage: int = 3,
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(1, widths[0], 3), nn.ReLU())
        stages = []
        in_channels = widths[0]
        for stage_index, width in enumerate(widths):
            blocks = []
            for block_index in range(blocks_per_stage):
                stride = 2 if stage_index > 0 and block_index == 0 else 1
                blocks.append(BasicBlock(in_channels, width, stride))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps images (N, 1, H, W) to logits (N, num_classes)."""
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class InvertedResidual(nn.Module):
    """MobileNet-v2 inverted residual block.

    1x1 expansion conv-BN-ReLU6 (omitted when ``expand_ratio`` is 1), 3x3
    depthwise conv-BN-ReLU6, then a linear 1x1 projection conv-BN. The input
    is added back when the stride is 1 and the channel count is unchanged.

    Args:
        in_channels: Channels of the block input.
        out_channels: Channels of the block output.
        stride: Stride of the depthwise convolution.
        expand_ratio: Width multiplier of the hidden layer.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [*_conv_bn(in_channels, hidden, 1), nn.ReLU6()]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6()]
        layers += _conv_bn(hidden, out_channels, 1)
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies the block."""
        out = self.conv(x)
        return x + out if self.use_residual else out


class TinyMobileNetV2(nn.Module):
    """MobileNet-v2 topology scaled down for 16x16 single-channel images.

    Args:
        stem_channels: Output channels of the stem conv3x3-BN-ReLU6.
        settings: One ``(expand_ratio, channels, repeats, stride)`` row per
            group of inverted residual blocks, as in torchvision.
        last_channels: Output channels of the final conv1x1-BN-ReLU6.
        num_classes: Number of output logits.
    """

    def __init__(
        self,
        stem_channels: int = 16,
        settings: tuple[tuple[int, int, int, int], ...] = (
            (1, 16, 1, 1),
            (4, 24, 2, 2),
            (4, 32, 3, 2),
            (4, 40, 2, 1),
        ),
        last_channels: int = 128,
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(1, stem_channels, 3), nn.ReLU6()]
        in_channels = stem_channels
        for expand_ratio, channels, repeats, stride in settings:
            for repeat in range(repeats):
                block_stride = stride if repeat == 0 else 1
                layers.append(InvertedResidual(in_channels, channels, block_stride, expand_ratio))
                in_channels = channels
        layers += [*_conv_bn(in_channels, last_channels, 1), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps images (N, 1, H, W) to logits (N, num_classes)."""
        x = self.features(x)
        return self.classifier(torch.flatten(self.pool(x), 1))


def build_model(name: str) -> nn.Module:
    """Builds an untrained sample model.

    Args:
        name: One of :data:`MODEL_NAMES`.

    Returns:
        The freshly initialised module, in training mode.

    Raises:
        ValueError: If ``name`` is not a known model.
    """
    if name == "resnet":
        return TinyResNet()
    if name == "mobilenet":
        return TinyMobileNetV2()
    raise ValueError(f"unknown model {name!r}; expected one of {MODEL_NAMES}")


def load_torch_model(name: str, models_dir: Path = SAMPLE_MODELS_DIR) -> nn.Module:
    """Loads a trained sample model from its BatchNorm-kept export ``<models_dir>/<name>_bn.onnx``.

    That export names every initializer after its ``state_dict`` key; parameters the
    exporter deduplicated come back through ``Identity`` nodes, which are followed. So
    the ONNX file is the single stored copy of the weights.

    Args:
        name: One of :data:`MODEL_NAMES`.
        models_dir: Folder written by ``make_sample_models.py``.

    Returns:
        The module in eval mode with the trained weights and running statistics.

    Raises:
        KeyError: If the export lacks a parameter or buffer of the module.
    """
    import onnx
    from onnx import numpy_helper

    exported = onnx.load(str(models_dir / f"{name}_bn.onnx"))
    arrays = {t.name: numpy_helper.to_array(t) for t in exported.graph.initializer}
    for node in exported.graph.node:
        if node.op_type == "Identity" and node.input[0] in arrays:
            arrays[node.output[0]] = arrays[node.input[0]]
    model = build_model(name)
    state = model.state_dict()
    missing = [k for k in state if not k.endswith("num_batches_tracked") and k not in arrays]
    if missing:
        raise KeyError(f"{name}_bn.onnx lacks {missing[:3]}")
    for key in state:
        if key in arrays:
            state[key] = torch.from_numpy(arrays[key].copy())
    model.load_state_dict(state)
    return model.eval()
