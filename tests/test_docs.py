"""docs/: every ``docs/<page>.md#<anchor>`` cited anywhere in the repository exists, every link
between the pages resolves, and the pages stand on their own (no pointer outside the repository).
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
CITATION = re.compile(r"docs/(\w+\.md)#([\w-]+)")
LINK = re.compile(r"\]\(([\w-]*\.md)?(?:#([\w-]+))?\)")


def _anchors(page: pathlib.Path) -> set[str]:
    return set(re.findall(r'<a id="([\w-]+)"></a>', page.read_text()))


def _tracked_text_files() -> list[pathlib.Path]:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [ROOT / f for f in files if f.endswith((".py", ".md", ".ipynb", ".toml"))]


def test_pages_exist():
    assert {p.name for p in PAGES} >= {"theory.md", "design.md", "recipe.md"}


def test_every_cited_anchor_exists():
    anchors = {p.name: _anchors(p) for p in PAGES}
    cited = []
    for path in _tracked_text_files():
        if not path.is_file():
            continue
        for page, anchor in CITATION.findall(path.read_text(errors="replace")):
            cited.append((path.relative_to(ROOT), page, anchor))
            assert anchor in anchors.get(page, ()), (
                f"{path.relative_to(ROOT)} cites missing docs/{page}#{anchor}"
            )
    assert cited  # the code does point into docs/


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_between_pages_resolve(page):
    for target, anchor in LINK.findall(page.read_text()):
        target_page = DOCS / target if target else page
        assert target_page.is_file(), f"{page.name} links to missing {target}"
        if anchor:
            assert anchor in _anchors(target_page), f"{page.name} links to missing #{anchor}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_stand_on_their_own(page):
    text = page.read_text()
    # The names of the development machine's paths and of the private spec document, which a
    # user who clones the repository does not have.
    for outside in ("SPEC", "/work", os.path.join("..", "shared")):
        assert outside not in text, f"{page.name} refers to {outside!r}, outside the repository"


def test_layout_names_every_module():
    # docs/design.md#layout describes the tree package by package: every module of every
    # package row (and every top-level module) is named there.
    section = (DOCS / "design.md").read_text().split('<a id="layout"></a>')[1].split("<a id=")[0]
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "imixer_jax"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    rows = re.findall(r"^\| `(imixer_jax/[\w*.]*/?)` \| (.*) \|$", section, re.M)
    assert len(rows) >= 8
    for place, holds in rows:
        named = set(re.findall(r"`(\w+)", holds))
        if place == "imixer_jax/*.py":
            inside = [f.split("/", 1)[1] for f in files if f.count("/") == 1]
        else:
            assert any(f.startswith(place) for f in files), f"{place} is not in the tree"
            inside = [f[len(place) :].split("/")[0] for f in files if f.startswith(place)]
        modules = {
            name.removesuffix(".py") for name in inside if name.endswith(".py") or "." not in name
        }
        missing = modules - named - {"__init__"}
        assert not missing, f"docs/design.md#layout does not name {sorted(missing)} in {place}"
