"""The outputs of every main command on the bundled samples are bit-identical to those recorded.

``tests/data/output_digests_samples.json`` holds the digests computed by
``tools/reference/output_digests.py`` at commit 77e90b9, before the package was re-laid-out.
A difference means a command's output changed: rerun the tool with ``--compare`` and
``--payloads`` to see which case and what in it.

Re-recorded twice since, each time on purpose and checked case by case with ``--payloads``
against the code before: ``auto``'s paired-test rule (3 cases of one chip, where it now keeps
``delta``), and the clean statistics pass run in pieces of 16 samples (70 of 157 cases,
every one within float rounding: report numbers at most 6e-7 apart relative, the same
choices; the statistics pooled from the pieces instead of onnxruntime's kernel over the
whole batch).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import nabn_onnx
from tools.reference import output_digests

RECORDED = Path(__file__).parent / "data" / "output_digests_samples.json"


def test_checks_this_checkout():
    # an installed nabn_onnx from another checkout would be checked instead (pyproject sets pythonpath)
    assert Path(nabn_onnx.__file__).resolve().parent.parent == output_digests.ROOT


@pytest.fixture(scope="module")
def digests():
    return output_digests.sample_digests()


def test_same_cases(digests):
    recorded = json.loads(RECORDED.read_text())
    assert sorted(digests) == sorted(recorded), (
        f"cases not recorded: {sorted(set(digests) - set(recorded))}; "
        f"recorded, not computed: {sorted(set(recorded) - set(digests))}"
    )


@pytest.mark.parametrize("case", sorted(json.loads(RECORDED.read_text())))
def test_digest_unchanged(digests, case):
    recorded = json.loads(RECORDED.read_text())[case]
    assert case in digests, f"case {case} is no longer computed"
    assert digests[case] == recorded, f"output of case {case} changed since 77e90b9: {digests[case]} != {recorded}"
