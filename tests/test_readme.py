"""The README's quick start is the contract with a newcomer: keep it true."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from featviz.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
CI = (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def quick_start() -> list[str]:
    block = re.search(r"## Quick start\s+```bash\n(.*?)```", README, re.S)
    assert block, "README has no Quick start code block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_quick_start_has_install_run_and_test_commands() -> None:
    lines = quick_start()
    assert any(line.startswith("pip install") for line in lines)
    assert any(line.startswith("featviz show sample_images/") for line in lines)
    assert any(line.startswith("python -m pytest") for line in lines)


def test_ci_runs_the_readme_install_and_test_commands() -> None:
    lines = quick_start()
    install = next(line for line in lines if line.startswith("pip install"))
    test = next(line for line in lines if line.startswith("python -m pytest"))
    ci_lines = [line.strip() for line in CI.splitlines()]
    assert install in ci_lines
    assert test in ci_lines


def test_quick_start_show_command_works_word_for_word(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    command = next(line for line in quick_start() if line.startswith("featviz show"))
    argv = shlex.split(command)[1:]
    (tmp_path / "sample_images").symlink_to(ROOT / "sample_images")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, result.output
    image = Path(argv[1]).stem
    out = tmp_path / "featviz-out" / image / "features.0"
    assert (out / "grid.png").is_file() and (out / "summary.json").is_file()
    assert str(out / "grid.png").endswith(result.output.splitlines()[0].split("featviz-out/", 1)[1])


def test_readme_pictures_exist() -> None:
    for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README):
        assert (ROOT / target).is_file(), target


def test_readme_shows_the_cpu_only_install_after_the_quick_start() -> None:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(blocks) >= 2 and blocks[0].strip().splitlines() == quick_start()  # the quick start comes first
    cpu = [line.strip() for line in blocks[1].splitlines() if line.strip()]
    install = next(line for line in quick_start() if line.startswith("pip install"))
    wheel = "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu"
    assert wheel in cpu and install in cpu and cpu.index(wheel) < cpu.index(install)
