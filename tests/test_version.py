"""What a pipeline pins: the version (from the package metadata), the changelog, the typed public API,
and the version in every model's provenance."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.version import Version

import nabn_onnx as nb
from nabn_onnx.cli import main

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"


def _pyproject_version() -> str:
    match = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), flags=re.M)
    assert match, "pyproject.toml has no static version"
    return match.group(1)


def test_version_is_semantic():
    for text in (nb.__version__, _pyproject_version()):
        version = Version(text)
        assert len(version.release) == 3, f"{text}: MAJOR.MINOR.PATCH"


def test_version_comes_from_the_installed_metadata():
    try:
        dist = metadata.distribution("nabn-onnx")
    except metadata.PackageNotFoundError:
        pytest.skip("nabn-onnx is not installed")
    assert nb.__version__ == dist.version
    origin = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
    if Path(origin.removeprefix("file://")).resolve() != ROOT:
        pytest.skip(f"the installed nabn-onnx is another checkout ({origin}); its metadata is not this pyproject's")
    assert dist.version == _pyproject_version()


def test_version_falls_back_when_not_installed():
    code = (
        "import importlib.metadata as m\n"
        "def missing(name): raise m.PackageNotFoundError(name)\n"
        "m.version = missing\n"
        "import nabn_onnx; print(nabn_onnx.__version__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "0+unknown"
    assert Version("0+unknown") < Version("0.1.0")


def test_cli_prints_the_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"nabn-onnx {nb.__version__}"


def test_changelog_covers_the_version():
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## \[([^\]]+)\]", text, flags=re.M)
    assert headings[0] == "Unreleased" and "0.1.0" in headings
    version = Version(_pyproject_version())
    if version.is_devrelease or version.is_prerelease:
        assert Version(headings[1]) < version, "the newest release in CHANGELOG.md must precede the development version"
    else:
        assert str(version) in headings, f"CHANGELOG.md has no section for release {version}"


def test_public_api_is_typed_documented_and_listed_on_the_stability_page():
    assert (Path(nb.__file__).parent / "py.typed").is_file()
    assert 'nabn_onnx = ["py.typed"]' in (ROOT / "pyproject.toml").read_text()
    # the README's Stability section is now the docs page docs/stability.md (its first section)
    page = (ROOT / "docs" / "stability.md").read_text(encoding="utf-8")
    stability = page.split("# Stability", 1)[1].split("\n## ", 1)[0]
    for name in nb.__all__:
        assert hasattr(nb, name), name
        if name != "__version__":
            assert (getattr(nb, name).__doc__ or "").strip(), f"nabn_onnx.{name} has no docstring"
        assert f"`{name}`" in stability, f"docs/stability.md does not name nabn_onnx.{name}"


def test_provenance_carries_the_version(tmp_path):
    noise = nb.make_noise("mul", 0.1, seed=3)
    out = tmp_path / "chip.nabn.onnx"
    nb.calibrate(
        str(SAMPLES / "resnet_fused.onnx"),
        str(SAMPLES / "digits_calib.npz"),
        noise=noise,
        max_batches=1,
        method="paper",
        output=str(out),
    )
    props = {p.key: p.value for p in nb.load_model(str(out)).metadata_props}
    assert props["nabn.version"] == nb.__version__
    assert json.loads(props["nabn.calibrate"])["method"] == "paper"
