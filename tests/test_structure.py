"""The package reads top-down: every import between featviz's modules points down the stack.

The stack below is the one drawn at the top of the README's "Project layout"; a new module gets
its place here and there. Imports inside functions count too (a deferred import is still a
dependency); only ``if TYPE_CHECKING:`` blocks, which never run, are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "featviz"

# Bottom first. A module may import modules of lower levels (and none of its own level or above).
STACK: list[set[str]] = [
    {"errors", "png", "progress", "viewer"},
    {"layout"},
    {"checkpoints", "downloads", "images", "inputs", "official", "preprocess", "targets"},
    {"timm_models"},
    {"models"},
    {"layers"},
    {"capture", "learned", "stn"},
    {"gates"},
    {"attention", "cam", "faithfulness", "notebook", "render", "receptive", "atlas"},
    {"atlas_pictures", "explain", "options"},
    {"camscore"},
    {"result"},
    {"estimate", "settings"},
    {"pipeline"},
    {"report", "atlas_page"},
    {"export"},
    {"atlas_export"},
    {"cli_common"},
    {"cli_atlas"},
    {"cli"},
    {"__main__"},
]
LEVEL = {name: level for level, names in enumerate(STACK) for name in names}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def featviz_imports(path: Path) -> set[str]:
    """Names of featviz modules that ``path`` imports at run time, anywhere in the file."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("featviz."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "featviz":
            found.update(alias.name for alias in node.names if alias.name in LEVEL)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("featviz."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def test_every_module_has_a_place_in_the_stack() -> None:
    assert sorted(set(MODULES) - set(LEVEL)) == []


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_down(module: str) -> None:
    upward = sorted(
        target for target in featviz_imports(PACKAGE / f"{module}.py")
        if target != module and LEVEL.get(target, -1) >= LEVEL[module]
    )
    assert upward == [], f"{module} imports {upward}, which are not below it"


def test_no_import_cycles() -> None:
    graph = {m: featviz_imports(PACKAGE / f"{m}.py") - {m} for m in MODULES}
    state: dict[str, int] = {}

    def cycle_from(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*trail, node, target]
            if target not in state and (found := cycle_from(target, [*trail, node])):
                return found
        state[node] = 2
        return None

    for module in MODULES:
        if module not in state:
            assert cycle_from(module, []) is None


def test_the_checker_sees_deferred_imports(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from featviz.cli import main\n"
                      "def f():\n    from featviz.export import Exporter\n", encoding="utf-8")
    assert featviz_imports(source) == {"export"}


def test_the_readme_layout_lists_every_module_top_down() -> None:
    """The README's "Project layout" names every module once, in the stack's order (top first)."""
    import re

    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Project layout", 1)[1].split("```", 2)[1]
    listed = re.findall(r"^  (\w+)\.py ", block, re.M)
    assert sorted(listed) == sorted(set(MODULES) - {"__main__"})
    levels = [LEVEL[name] for name in listed]
    assert levels == sorted(levels, reverse=True), listed
