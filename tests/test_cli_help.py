"""``--help`` in sections (issue 17): the long commands list their options under "Model
options:", "Drawing options:", … and every option appears exactly once.

The help text is parsed here from click's output (section headers are unindented lines ending
in ``:``, option rows start with two spaces and a dash); the expected options come from the
command's own parameters, not from the code that writes the sections.
"""

from __future__ import annotations

import re
from collections import Counter

import click
import pytest
from click.testing import CliRunner

from featviz.cli.common import SectionedCommand, help_sections, in_section
from featviz.cli.main import main

ROW = re.compile(r"^  (-[^ ].*?)(?:  |$)")  # "  -m, --model TEXT   help…" -> "-m, --model TEXT"

EXPECTED_SECTIONS = {
    "show": ["Model", "Layer", "Drawing", "Attention", "Class attention", "Transformer", "Output", "Run", "Other"],
    "export": ["Model", "Layer", "Drawing", "Attention", "Class attention", "Transformer", "Output", "Run", "Other"],
    "sweep": ["Model", "Layer", "Drawing", "Attention", "Class attention", "Transformer", "Output", "Other"],
    "atlas": ["Model", "Layer", "Atlas", "Output", "Run", "Other"],
    "layers": ["Model", "Output", "Other"],
}


def _sections(command: str) -> dict[str, list[str]]:
    """Section name -> the option strings of its rows, in order, from ``featviz COMMAND --help``."""
    result = CliRunner().invoke(main, [command, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in result.output.splitlines():
        if line and not line[0].isspace() and line.endswith(" options:"):
            assert line[:-len(" options:")] not in sections, f"section {line!r} twice"
            current = sections.setdefault(line[:-len(" options:")], [])
        elif current is not None and (match := ROW.match(line)):
            declaration = match.group(1)
            current.extend(name for name in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", declaration))
        elif line and not line[0].isspace():
            current = None  # the usage line, the epilog
    return sections


def _declared(command: str) -> list[str]:
    """Every option string of the command, from its parameters (``--help`` included)."""
    cmd = main.commands[command]
    parent = click.Context(main, info_name="featviz", **main.context_settings)  # -h, --help as the CLI has them
    ctx = click.Context(cmd, info_name=command, parent=parent)
    return [name for param in cmd.get_params(ctx) if isinstance(param, click.Option)
            for name in param.opts + param.secondary_opts]


@pytest.mark.parametrize("command", sorted(EXPECTED_SECTIONS))
def test_sections_in_order_and_every_option_exactly_once(command: str) -> None:
    sections = _sections(command)
    assert list(sections) == EXPECTED_SECTIONS[command]
    shown = Counter(name for names in sections.values() for name in names)
    declared = _declared(command)
    assert len(declared) == len(set(declared))
    assert shown == Counter(declared), "missing or repeated: " + str(set(shown) ^ set(declared))
    assert sections["Other"] == ["-h", "--help"]


def test_show_puts_options_in_their_sections() -> None:
    sections = _sections("show")
    assert len(_declared("show")) >= 45  # the block the sections split up
    expected = {"Model": ["--model", "--weights", "--resize", "--no-crop"], "Layer": ["--layer"],
                "Drawing": ["--size", "--cmap", "--top-k", "--normalize"],
                "Attention": ["--spatial", "--channel", "--attention", "--dct-frequencies", "--stn"],
                "Class attention": ["--cam", "--target", "--cam-batch", "--cam-score", "--cam-score-steps"],
                "Output": ["--out", "--json", "--save-raw", "--png-level", "--open"],
                "Run": ["--batch-size", "--workers", "--quiet", "--progress"]}
    for section, names in expected.items():
        assert set(names) <= set(sections[section]), section
    assert sections["Layer"] == ["-l", "--layer"]


def test_export_and_sweep_sections() -> None:
    export = _sections("export")
    assert {"--recursive", "--skip-existing", "--shard"} <= set(export["Run"])
    sweep = _sections("sweep")
    assert sweep["Drawing"] == ["--heat-cmap", "--alpha"]
    assert sweep["Attention"] == ["--spatial"]


def test_the_group_help_still_lists_commands() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "Commands:" in result.output and "show" in result.output


def test_unknown_option_name_in_help_sections_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="has no option 'nope'"):
        @help_sections(Run=("nope",))
        @click.option("--real")
        def command(real: str) -> None: ...


def test_a_command_of_its_own_gets_sections_in_the_fixed_order() -> None:
    @click.command(cls=SectionedCommand)
    @help_sections(Model=("model",))
    @in_section("Run", click.option("--fast", is_flag=True))
    @click.option("--model")
    @click.option("--loose", is_flag=True)
    def command(fast: bool, model: str | None, loose: bool) -> None: ...

    text = CliRunner().invoke(command, ["--help"]).output
    headers = [line for line in text.splitlines() if line.endswith("options:")]
    assert headers == ["Model options:", "Run options:", "Other options:"]
    assert text.index("--loose") > text.index("Other options:") > text.index("--fast")
