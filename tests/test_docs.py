"""The manual (mkdocs.yml + docs/) and the README's front page stay one connected whole.

The README is the front page: it must link every page of the manual's nav, every nav entry must be
a page that exists, and no page under docs/ may be left out of the nav. The build itself
(`mkdocs build --strict`) runs in .ci/run, which installs the docs extra; these checks need
neither MkDocs nor YAML, so they run with the test extra alone.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from featviz.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text(encoding="utf-8")
MKDOCS = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
CI = (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def nav_pages() -> list[str]:
    """The .md paths of mkdocs.yml's nav (`- Title: page.md` or `- page.md`), in order."""
    block = MKDOCS.split("\nnav:\n", 1)[1]
    block = re.split(r"\n(?=\S)", block, maxsplit=1)[0]  # up to the next top-level key
    return re.findall(r"^\s*-\s+(?:[^:\n]+:\s+)?(\S+\.md)\s*$", block, re.MULTILINE)


def readme_links() -> set[str]:
    """Targets of the README's links into docs/, relative to docs/, without #anchors."""
    return {target.split("#", 1)[0].removeprefix("docs/")
            for target in re.findall(r"\]\((docs/[^)\s]+\.md(?:#[^)\s]*)?)\)", README)}


def test_nav_parser_reads_both_entry_forms() -> None:
    pages = nav_pages()
    assert pages[0] == "index.md" and "reference/index.md" in pages and "reference/errors.md" in pages
    assert len(pages) == len(set(pages)) >= 20


def test_every_nav_entry_exists() -> None:
    missing = [page for page in nav_pages() if not (DOCS / page).is_file()]
    assert not missing


def test_every_docs_page_is_in_the_nav() -> None:
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(nav_pages()) == pages


def test_the_front_page_links_every_page_of_the_manual() -> None:
    assert not set(nav_pages()) - readme_links()


def test_every_readme_link_into_docs_resolves() -> None:
    assert not [link for link in readme_links() if not (DOCS / link).is_file()]


def test_docs_pictures_exist() -> None:
    for page in nav_pages():
        for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", (DOCS / page).read_text(encoding="utf-8")):
            assert (DOCS / page).parent.joinpath(target).is_file(), (page, target)


@pytest.mark.parametrize("section", ["quickstart", "layout"])
def test_snippet_sections_the_manual_includes_are_in_the_readme(section: str) -> None:
    include = f'--8<-- "README.md:{section}"'
    assert any(include in (DOCS / page).read_text(encoding="utf-8") for page in nav_pages())
    start, end = f"<!-- --8<-- [start:{section}] -->", f"<!-- --8<-- [end:{section}] -->"
    assert README.count(start) == README.count(end) == 1 and README.index(start) < README.index(end)
    heading = {"quickstart": "## Quick start", "layout": "## Project layout"}[section]
    assert README.split(start, 1)[1].split(end, 1)[0].lstrip().startswith(heading)


def test_the_front_page_stays_short() -> None:
    assert len(README.splitlines()) <= 300


def test_ci_builds_the_manual_strictly_before_the_tests() -> None:
    lines = [line.strip() for line in CI.splitlines()]
    build = next(i for i, line in enumerate(lines) if "mkdocs build" in line)
    assert "--strict" in lines[build] and 'pip install ".[docs]"' in lines[:build]
    assert build < lines.index("python -m pytest")
    assert re.search(r"^\s*font:\s*false\s*$", MKDOCS, re.MULTILINE), "web fonts would need the network"


def example_commands() -> list[str]:
    section = README.split("## One example per command", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block
    return [line.split("  #", 1)[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_one_example_per_command() -> None:
    commands = {shlex.split(line)[1] for line in example_commands()}
    assert set(main.commands) <= commands  # type: ignore[attr-defined]


@pytest.mark.parametrize("line", example_commands())
def test_front_page_examples_parse(line: str) -> None:
    """Every option in the examples exists and takes the value given (parsing only: nothing runs)."""
    argv = shlex.split(line)
    assert argv[0] == "featviz"
    command = main.commands[argv[1]]  # type: ignore[attr-defined]
    # the parent context carries the group's settings (-h, --help): click caches a command's help
    # option the first time it is made, so a context without them would change later --help output
    parent = click.Context(main, info_name="featviz", **main.context_settings)
    with command.make_context(argv[1], argv[2:], parent=parent, resilient_parsing=False):
        pass
