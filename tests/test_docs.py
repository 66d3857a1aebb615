"""The docs site holds together without building it: every nav page exists, every relative link resolves.

``mkdocs build --strict`` (``.ci/run``) checks the same and more, but needs the ``docs`` extra;
these checks need nothing beyond the standard library, so a moved or renamed page fails the
ordinary test run. The API reference lists exactly ``nabn_onnx.__all__``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: A markdown link or image: [text](target) or ![alt](target), target without spaces.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def nav_pages(config: str) -> List[str]:
    """The .md files the ``nav:`` of a mkdocs.yml names, in order (a plain-text read, no YAML library)."""
    nav = config.split("\nnav:\n", 1)[1]
    pages = []
    for line in nav.splitlines():
        if line and not line.startswith((" ", "-", "#")):
            break  # the next top-level key ends the nav
        match = re.search(r"(?:^\s*-\s+|:\s+)([^\s:#]+\.md)\s*$", line)
        if match:
            pages.append(match.group(1))
    return pages


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans, where brackets are not links."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M)
    return re.sub(r"(`+)(?:(?!\1).)+?\1", "", text, flags=re.S)


def relative_links(text: str) -> Iterator[str]:
    """The relative link targets of a markdown text (no URL scheme, not a bare #anchor)."""
    for match in LINK.finditer(_prose(text)):
        target = match.group(1)
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("#", "//")):
            continue
        yield target


def _markdown_files() -> List[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def _links() -> List[Tuple[Path, str]]:
    return [(path, target) for path in _markdown_files() for target in relative_links(path.read_text(encoding="utf-8"))]


def test_nav_is_read():
    pages = nav_pages((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert pages[0] == "index.md"
    assert "api.md" in pages
    assert len(pages) == len(set(pages)), "a page is in the nav twice"


@pytest.mark.parametrize("page", nav_pages((ROOT / "mkdocs.yml").read_text(encoding="utf-8")))
def test_nav_page_exists(page):
    assert (DOCS / page).is_file(), f"mkdocs.yml names docs/{page}, which does not exist"


def test_links_are_found():
    """The link reader sees links, and not bracketed text in code."""
    text = "[a](x.md) ![b](img/y.png) [c](https://e.org) [d](#top) `[e](no.md)`\n```\n[f](no.md)\n```\n"
    assert list(relative_links(text)) == ["x.md", "img/y.png"]
    assert len(_links()) > 50


def _link_id(value: object) -> str:
    return value.relative_to(ROOT).as_posix() if isinstance(value, Path) else str(value)


@pytest.mark.parametrize(("path", "target"), _links(), ids=_link_id)
def test_relative_link_resolves(path, target):
    resolved = (path.parent / target.split("#", 1)[0]).resolve()
    where = path.relative_to(ROOT).as_posix()
    assert resolved.exists(), f"{where} links to {target}, which does not exist"
    if DOCS in path.parents:
        # a page linking out of docs/ builds a broken link on the site (mkdocs --strict fails on it)
        assert DOCS in resolved.parents, f"{where} links to {target}, outside docs/"


def test_api_reference_lists_exactly_the_public_names():
    source = (ROOT / "nabn_onnx" / "__init__.py").read_text(encoding="utf-8")
    public = re.findall(r'^\s+"(\w+)",', source.split("__all__ = [", 1)[1].split("]", 1)[0], flags=re.M)
    listed = re.findall(r"^::: nabn_onnx\.(\w+)\s*$", (DOCS / "api.md").read_text(encoding="utf-8"), flags=re.M)
    assert sorted(listed) == sorted(public)
    assert len(listed) == len(set(listed))
