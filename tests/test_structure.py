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

# The subpackages in the order data flows, bottom first. A module may import from any subpackage
# below its own, and from its own subpackage only modules of a lower level (the inner lists, bottom
# first). "errors" is the one leaf module at the top of the package; "__main__" sits above all.
STACK: list[tuple[str, list[set[str]]]] = [
    ("errors", [{"errors"}]),
    ("inputs", [{"names"}, {"images", "discover"}]),
    ("models", [{"checkpoints", "downloads", "official", "preprocess"}, {"timm_models", "userfiles"}, {"build"}]),
    ("capture", [{"layers", "tokens"}, {"gatetrace", "layouts", "stn", "calls", "frozen", "onechannel"},
                 {"hooks", "selfattention", "drive"}, {"gates"}]),
    ("maps", [{"targets", "aucscores"}, {"attention", "cam", "faithfulness", "receptive", "transformer",
                                            "tokenstats", "artifacts", "tokenpca"}, {"explain", "tokenpcafit"},
              {"camscore", "vitexplain", "tokenrun"}]),
    ("output", [{"png"}, {"layout"}, {"render", "tokencharts"}, {"notebook", "heads"}, {"vitfiles"},
                {"options", "resultfiles"}, {"result", "tokenextras", "sweepfiles"},
                {"estimate", "settings", "resume", "startup", "vitrun"}, {"pipeline"}, {"reportdata"}, {"report"},
                {"records"}, {"export"}]),
    ("optimize", [{"param", "transforms"}, {"spectrum"}, {"maco"}, {"engine"}, {"export"}, {"api"}]),
    ("atlas", [{"schema"}, {"accumulator"}, {"pictures", "page"}, {"write"}, {"export"}, {"optimized"}]),
    ("cli", [{"progress", "viewer", "signals", "heap"}, {"common"}, {"tokenoptions"},
             {"atlas", "optimize", "batch", "sweep", "layers", "spectrum"}, {"main"}]),
    ("__main__", [{"__main__"}]),
]


def _dotted(unit: str, module: str) -> str:
    return unit if unit == module else f"{unit}.{module}"


# "unit.module" -> (unit's place, module's place inside its unit). A subpackage's __init__ sits
# above its modules.
LEVEL: dict[str, tuple[int, int]] = {}
for _unit_level, (_unit, _levels) in enumerate(STACK):
    for _inner, _names in enumerate(_levels):
        LEVEL.update({_dotted(_unit, name): (_unit_level, _inner) for name in _names})
    if len(_levels) > 1 or _unit not in _levels[0]:
        LEVEL[_unit] = (_unit_level, len(_levels))


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_name(path: Path) -> str:
    """featviz/maps/cam.py -> "maps.cam"; featviz/cli/__init__.py -> "cli"; featviz/errors.py -> "errors"."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _known(dotted: str) -> str | None:
    """The longest stack name that ``dotted`` (a featviz module path, without "featviz.") starts with."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in LEVEL:
            return ".".join(parts[:end])
    return None


def featviz_imports(path: Path) -> set[str]:
    """Stack names of the featviz modules that ``path`` imports at run time, anywhere in the file."""
    found: set[str] = set()

    def add(dotted: str) -> None:
        name = _known(dotted)
        found.add(name if name is not None else dotted)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module and (
                node.module == "featviz" or node.module.startswith("featviz.")):
            base = node.module.removeprefix("featviz").removeprefix(".")
            for alias in node.names:
                candidate = f"{base}.{alias.name}" if base else alias.name
                if candidate in LEVEL:
                    add(candidate)
                elif base:
                    add(base)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("featviz."):
                    add(alias.name.removeprefix("featviz."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


FILES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if p != PACKAGE / "__init__.py"}
MODULES = sorted(FILES)
SUBPACKAGES = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))


def test_every_module_has_a_place_in_the_stack() -> None:
    assert sorted(set(MODULES) - set(LEVEL)) == []


def test_every_subpackage_is_in_the_stack() -> None:
    assert sorted(set(SUBPACKAGES) - {unit for unit, _ in STACK}) == []


def _below(target: str, module: str) -> bool:
    """Whether ``module`` may import ``target``: a lower subpackage, or a lower level of its own."""
    (unit, inner), (target_unit, target_inner) = LEVEL[module], LEVEL[target]
    return target_unit < unit or (target_unit == unit and target_inner < inner)


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_down(module: str) -> None:
    imported = featviz_imports(FILES[module]) - {module}
    unknown = sorted(target for target in imported if target not in LEVEL)
    assert unknown == [], f"{module} imports {unknown}, which are not featviz modules in the stack"
    upward = sorted(target for target in imported if not _below(target, module))
    assert upward == [], f"{module} imports {upward}, which are not below it"


def test_no_import_cycles() -> None:
    graph = {m: featviz_imports(FILES[m]) - {m} for m in MODULES}
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
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from featviz.cli.main import main\n"
                      "def f():\n    from featviz.output.export import Exporter\n"
                      "    from featviz.maps import cam as formulas\n", encoding="utf-8")
    assert featviz_imports(source) == {"output.export", "maps.cam"}


def test_the_readme_layout_lists_every_module_top_down() -> None:
    """The README's "Project layout" names every module once, in the stack's order (top first)."""
    import re

    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Project layout", 1)[1].split("```", 2)[1]
    listed = [name.replace("/", ".") for name in re.findall(r"^  ([\w/]+)\.py ", block, re.M)]
    assert sorted(listed) == sorted(set(MODULES) - {"__main__"} - set(SUBPACKAGES))
    levels = [LEVEL[name] for name in listed]
    assert levels == sorted(levels, reverse=True), listed
