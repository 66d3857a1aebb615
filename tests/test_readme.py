"""The manual's Python snippets run, in order, on the sample models, so the docs cannot drift from the code.

The manual is the README plus the pages of the docs site (mkdocs.yml, docs/). Every fenced
```python block of the files in SOURCES is executed, file after file, in one namespace, in a
temporary folder holding the samples under the placeholder names the snippets use
(model.onnx, calib.npz, test.npz, an image folder val/). The few edits that make an
ImageNet-sized snippet fit a 16x16 digits model are listed in SUBSTITUTIONS, and the test
fails when those files no longer contain the text they replace, so they cannot hide a
change. A page outside SOURCES that has a ```python block fails too, so no snippet escapes.
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
#: The files whose snippets run, in this order (the README's snippets moved to the docs pages).
SOURCES = (
    "README.md",
    "docs/python-api.md",
    "docs/commands/evaluate.md",
    "docs/commands/sweep.md",
    "docs/commands/check.md",
)
#: Placeholder file name in the README -> the sample it stands for.
FILES = {
    "model.onnx": SAMPLES / "resnet_fused.onnx",
    "calib.npz": SAMPLES / "digits_calib.npz",
    "test.npz": SAMPLES / "digits_test.npz",
}
#: Snippet text -> what runs instead, with why.
SUBSTITUTIONS = {
    # the samples are 16x16 grayscale digits in [0, 1], not ImageNet photographs
    "resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD": "resize=16, crop=16, mean=0.0, std=1.0",
    # one chip per eta shows the call works and keeps the test quick
    "seeds=5)": "seeds=1)",
}
#: Names the snippets use without defining them (the reader's own data).
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


def _texts() -> Dict[str, str]:
    """Each file of SOURCES and its text, in order."""
    return {name: (ROOT / name).read_text(encoding="utf-8") for name in SOURCES}


def _blocks() -> List[str]:
    texts = _texts()
    text = "\n".join(texts.values())
    for old in SUBSTITUTIONS:
        assert old in text, f"{', '.join(SOURCES)} no longer contain {old!r}: update SUBSTITUTIONS in {__file__}"
    blocks = [block for page in texts.values() for block in python_blocks(page)]
    for old, new in SUBSTITUTIONS.items():
        blocks = [b.replace(old, new) for b in blocks]
    return blocks


def _labels() -> List[str]:
    """Where each block of _blocks() comes from, e.g. "docs/python-api.md python block 0"."""
    return [f"{name} python block {i}" for name, text in _texts().items() for i in range(len(python_blocks(text)))]


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
        for label, block in zip(_labels(), _blocks()):
            try:
                exec(compile(block, label, "exec"), namespace)
                outcomes.append(None)
            except Exception as exc:  # every failure is reported by its block's test
                outcomes.append(exc)
    return outcomes


def test_readme_has_python_blocks():
    assert len(_blocks()) >= 3


def test_every_python_snippet_of_the_manual_runs_here():
    """A ```python block on a page outside SOURCES would never run: list the page in SOURCES."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    outside = [p.relative_to(ROOT).as_posix() for p in pages if python_blocks(p.read_text(encoding="utf-8"))]
    assert sorted(set(outside) - set(SOURCES)) == []


@pytest.mark.parametrize("index", range(len(_blocks())))
def test_readme_block_runs(executed, index):
    error = executed[index]
    if index in KNOWN_FAILURES:
        assert error is not None, f"{_labels()[index]} runs now: remove it from KNOWN_FAILURES"
        pytest.xfail(f"{KNOWN_FAILURES[index]}: {type(error).__name__}: {error}")
    assert error is None, f"{_labels()[index]} raised {type(error).__name__}: {error}"
