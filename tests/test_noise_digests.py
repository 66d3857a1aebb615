"""Injected weights stay byte-identical across the noise/ re-layout.

The digests were recorded from the code before noise/ was split into one module per
device family: the same seed and draw must give the same bytes, so the random draws
must stay in exactly the same order.
"""

from __future__ import annotations

import hashlib

import pytest
from onnx import numpy_helper

from nabn_onnx.noise import make_noise
from nabn_onnx.passes import InjectWeightNoisePass

from builders import small_cnn

#: (kind, seed, draw) -> first 16 hex digits of the SHA-256 of the injected initializers.
DIGESTS = {
    ("add", 0, 0): "db85133f5aa2d18f",
    ("add", 0, 1): "b5f888101d4df304",
    ("add", 1, 0): "c6557ac0d8164f5d",
    ("add", 1, 1): "489122fcb0b4b5c6",
    ("add", 7, 0): "534ec407e5ac7491",
    ("add", 7, 1): "083e870f343d3db4",
    ("ideal", 0, 0): "9d565a13647d21fd",
    ("ideal", 0, 1): "9d565a13647d21fd",
    ("ideal", 1, 0): "9d565a13647d21fd",
    ("ideal", 1, 1): "9d565a13647d21fd",
    ("ideal", 7, 0): "9d565a13647d21fd",
    ("ideal", 7, 1): "9d565a13647d21fd",
    ("mul", 0, 0): "ac7b027f2fa41d3c",
    ("mul", 0, 1): "a65be57ed5c7ea4e",
    ("mul", 1, 0): "26f61ce1f4ac620d",
    ("mul", 1, 1): "245bdcd33e7a243a",
    ("mul", 7, 0): "89e7a66b001b83ed",
    ("mul", 7, 1): "c2ddd873526a06ce",
    ("pcm", 0, 0): "c8205c89730d14d5",
    ("pcm", 0, 1): "c8205c89730d14d5",
    ("pcm", 1, 0): "ee55001b8a985601",
    ("pcm", 1, 1): "ee55001b8a985601",
    ("pcm", 7, 0): "44cd10d73e061dd3",
    ("pcm", 7, 1): "44cd10d73e061dd3",
    ("rram", 0, 0): "8d973de3ff5f1ffb",
    ("rram", 0, 1): "8d973de3ff5f1ffb",
    ("rram", 1, 0): "e94ebf3e7449b92d",
    ("rram", 1, 1): "e94ebf3e7449b92d",
    ("rram", 7, 0): "89cdb2dcaeaff648",
    ("rram", 7, 1): "89cdb2dcaeaff648",
    ("rram-cmo", 0, 0): "3e630bb8401aaa6c",
    ("rram-cmo", 0, 1): "3e630bb8401aaa6c",
    ("rram-cmo", 1, 0): "6f46ce94c8a876c4",
    ("rram-cmo", 1, 1): "6f46ce94c8a876c4",
    ("rram-cmo", 7, 0): "a46b7dea347f79b2",
    ("rram-cmo", 7, 1): "a46b7dea347f79b2",
}


def _digest(kind: str, seed: int, draw: int) -> str:
    eta = 0.1 if kind in ("mul", "add") else None
    noise = make_noise(kind, eta, seed=seed)
    result = InjectWeightNoisePass(noise, draw=draw)(small_cnn(seed=3))
    digest = hashlib.sha256()
    for tensor in sorted(result.model.graph.initializer, key=lambda t: t.name):
        digest.update(tensor.name.encode())
        digest.update(numpy_helper.to_array(tensor).tobytes())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize("key", sorted(DIGESTS), ids=lambda k: "-".join(map(str, k)))
def test_injected_weights_unchanged(key):
    assert _digest(*key) == DIGESTS[key]
