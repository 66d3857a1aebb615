"""The README's Python snippets run, in order, on the sample models, so the docs cannot drift from the code.

Every fenced ```python block of README.md is executed in one namespace, in a temporary
folder holding the samples under the placeholder names the README uses (model.onnx,
calib.npz, test.npz, an image folder val/). The few edits that make an ImageNet-sized
snippet fit a 16x16 digits model are listed in SUBSTITUTIONS, and the test fails when the
README no longer contains the text they replace, so they cannot hide a change.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
#: Placeholder file name in the README -> the sample it stands for.
FILES = {
    "model.onnx": SAMPLES / "resnet_fused.onnx",
    "calib.npz": SAMPLES / "digits_calib.npz",
    "test.npz": SAMPLES / "digits_test.npz",
}
#: README text -> what runs instead, with why.
SUBSTITUTIONS = {
    # the samples are 16x16 grayscale digits in [0, 1], not ImageNet photographs
    "resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD": "resize=16, crop=16, mean=0.0, std=1.0",
    # one chip per eta shows the call works and keeps the test quick
    "seeds=5)": "seeds=1)",
}
#: Names the README's snippets use without defining them (the reader's own data).
PROVIDED = {"stream": lambda: [np.load(FILES["calib.npz"])["input"][i : i + 32] for i in range(0, 96, 32)]}
#: Snippet index -> why it is known to fail today (xfail, strict: fixing it makes the test say so).
KNOWN_FAILURES: Dict[int, str] = {}


def python_blocks(text: str) -> List[str]:
    """The ```python fenced blocks of a markdown text, in order."""
    return [m.group(1) for m in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M)]


def _image_folder(root: Path, count: int = 60) -> None:
    from PIL import Image

    data = np.load(FILES["test.npz"])
    for i, (image, label) in enumerate(zip(data["input"][:count], data["labels"][:count])):
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(image[0] * 255).astype(np.uint8), mode="L").save(folder / f"{i:03d}.png")


def _blocks() -> List[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for old in SUBSTITUTIONS:
        assert old in text, f"README.md no longer contains {old!r}: update SUBSTITUTIONS in {__file__}"
    blocks = python_blocks(text)
    for old, new in SUBSTITUTIONS.items():
        blocks = [b.replace(old, new) for b in blocks]
    return blocks


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Run every block in order in one namespace; the exception each one raised, or None."""
    pytest.importorskip("PIL")
    folder = tmp_path_factory.mktemp("readme")
    for name, source in FILES.items():
        shutil.copy(source, folder / name)
    # class subfolders need all ten digits for the labels to mean what the model means
    _image_folder(folder / "val", count=100)
    namespace: Dict[str, object] = {name: make() for name, make in PROVIDED.items()}
    outcomes: List[Optional[BaseException]] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        for index, block in enumerate(_blocks()):
            try:
                exec(compile(block, f"README.md python block {index}", "exec"), namespace)
                outcomes.append(None)
            except Exception as exc:  # every failure is reported by its block's test
                outcomes.append(exc)
    return outcomes


def test_readme_has_python_blocks():
    assert len(_blocks()) >= 3


@pytest.mark.parametrize("index", range(len(_blocks())))
def test_readme_block_runs(executed, index):
    error = executed[index]
    if index in KNOWN_FAILURES:
        assert error is not None, f"README python block {index} runs now: remove it from KNOWN_FAILURES"
        pytest.xfail(f"{KNOWN_FAILURES[index]}: {type(error).__name__}: {error}")
    assert error is None, f"README python block {index} raised {type(error).__name__}: {error}"
