"""The manual: every page in mkdocs.yml's nav exists, the README's front page links every one of
them, and every picture a page shows is there. (``mkdocs build --strict`` in .ci/run checks the
rest: broken links between pages, and the API reference against the source.)"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text(encoding="utf-8")


def nav_pages() -> list[str]:
    """The .md files named in mkdocs.yml's nav, relative to docs/ (read as text: no yaml needed)."""
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8").split("\nnav:", 1)[1]
    return re.findall(r"^\s*-\s*(?:[^:\n]+:\s*)?([\w./-]+\.md)\s*$", text, re.M)


def test_the_nav_names_pages_that_exist() -> None:
    pages = nav_pages()
    assert len(pages) >= 10
    assert [page for page in pages if not (DOCS / page).is_file()] == []


def test_every_markdown_page_is_in_the_nav() -> None:
    pages = set(nav_pages())
    on_disk = {str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md")}
    assert sorted(on_disk - pages) == []


def test_the_front_page_links_every_page_of_the_manual() -> None:
    linked = set(re.findall(r"\]\(docs/([\w./-]+\.md)(?:#[\w-]+)?\)", README))
    assert sorted(set(nav_pages()) - linked) == []


def test_the_front_page_is_short() -> None:
    assert len(README.splitlines()) <= 300


def test_every_picture_in_the_manual_exists() -> None:
    missing = []
    for page in DOCS.rglob("*.md"):
        for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if not target.startswith(("http:", "https:")) and not (page.parent / target).is_file():
                missing.append(f"{page.relative_to(ROOT)}: {target}")
    assert missing == []


def test_ci_builds_the_manual_strictly() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert 'pip install ".[docs]"' in ci
    assert re.search(r"^\S*\s*mkdocs build --strict", ci, re.M)
