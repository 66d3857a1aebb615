"""Exports the sample ResNet in the forms the samples do not cover, for the model-forms tests.

Run from the repository root (needs torch, onnxconverter-common, imported after ``--help``;
about 10 s)::

    python -m tools.samples.make_model_variants

Writes ``sample_models/variants/``:

* ``resnet_bn_b1.onnx``: BatchNorm kept, plain ``torch.onnx.export`` without
  ``dynamic_axes`` (batch fixed to 1), and the classifier input flattened with
  ``x.reshape(x.shape[0], -1)``, which the exporter bakes into a ``Reshape`` constant
  ``[1, -1]``: the batch lives in the graph, not only in the input shape.
* ``resnet_fused_b8.onnx``: BatchNorm folded (the exporter's default), batch fixed to 8,
  the same baked ``Reshape``.
* ``resnet_bn_initializers_as_inputs.onnx``: BatchNorm kept, exported with
  ``keep_initializers_as_inputs=True`` (what older exporters did): every weight is also a
  graph input.
* ``resnet_fused_fp16.onnx`` and ``resnet_fused_fp16_io32.onnx``: ``resnet_fused.onnx``
  converted with onnxconverter-common's ``convert_float_to_float16``, without and with
  ``keep_io_types``.
* ``resnet_fused_qdq.onnx``: ``resnet_fused.onnx`` quantized by onnxruntime's
  ``quantize_static`` in QDQ format (int8 weights per channel, uint8 activations,
  calibrated on ``digits_calib.npz``).

The weights are the trained sample ResNet's (``load_torch_model("resnet")``), so every
variant has the sample's accuracy.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from tools.samples.sample_models import SAMPLE_MODELS_DIR

if TYPE_CHECKING:
    from torch import nn

OUT = SAMPLE_MODELS_DIR / "variants"
OPSET = 17


def _baked_reshape(net: nn.Module) -> nn.Module:
    """The sample ResNet whose pooled features are flattened with a reshape on the batch size."""
    import torch
    from torch import nn

    class BakedReshape(nn.Module):
        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            net = self.net
            y = net.pool(net.stages(net.stem(x)))
            return net.fc(y.reshape(y.shape[0], -1))

    return BakedReshape(net)


def _export(model: nn.Module, batch: int, path: Path, fold: bool, inits_as_inputs: bool = False) -> None:
    import torch

    warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export")
    torch.onnx.export(
        model,
        (torch.zeros(batch, 1, 16, 16),),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        opset_version=OPSET,
        do_constant_folding=fold,
        keep_initializers_as_inputs=inits_as_inputs,
    )


def main(argv=None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    import torch

    from tools.samples._torch_models import load_torch_model

    OUT.mkdir(exist_ok=True)
    torch.manual_seed(0)
    net = load_torch_model("resnet").eval()
    baked = _baked_reshape(net).eval()
    _export(baked, 1, OUT / "resnet_bn_b1.onnx", fold=False)
    _export(baked, 8, OUT / "resnet_fused_b8.onnx", fold=True)
    dynamic = OUT / "resnet_bn_initializers_as_inputs.onnx"
    warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export")
    torch.onnx.export(
        net,
        (torch.zeros(2, 1, 16, 16),),
        str(dynamic),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        opset_version=OPSET,
        do_constant_folding=False,
        keep_initializers_as_inputs=True,
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )

    from onnxconverter_common import float16

    fused = onnx.load(str(SAMPLE_MODELS_DIR / "resnet_fused.onnx"))
    onnx.save(float16.convert_float_to_float16(fused), str(OUT / "resnet_fused_fp16.onnx"))
    onnx.save(float16.convert_float_to_float16(fused, keep_io_types=True), str(OUT / "resnet_fused_fp16_io32.onnx"))

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    calib = np.load(SAMPLE_MODELS_DIR / "digits_calib.npz")["input"]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": calib[i : i + 64]} for i in range(0, len(calib), 64)])

        def get_next(self):
            return next(self.items, None)

    quantize_static(
        str(SAMPLE_MODELS_DIR / "resnet_fused.onnx"),
        str(OUT / "resnet_fused_qdq.onnx"),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
    )
    for path in sorted(OUT.glob("*.onnx")):
        model = onnx.load(str(path))
        ops = {}
        for node in model.graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        dims = [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
        print(
            f"{path.name}: {path.stat().st_size:,} bytes, input {dims}, inputs listed {len(model.graph.input)}, "
            f"BatchNormalization {ops.get('BatchNormalization', 0)}, Reshape {ops.get('Reshape', 0)}, "
            f"DequantizeLinear {ops.get('DequantizeLinear', 0)}"
        )


if __name__ == "__main__":
    main()
