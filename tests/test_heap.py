"""featviz optimize keeps freed memory for reuse (featviz/cli/heap.py): the glibc call, when it
is made and when not, and that the commands that allocate per step make it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from featviz.cli import heap
from featviz.cli.main import main


class FakeLibc:
    """Stands in for libc.so.6: records mallopt's calls instead of changing this process."""

    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer
        outer = self

        class Mallopt:
            argtypes: Any = None
            restype: Any = None

            def __call__(self, parameter: int, value: int) -> int:
                outer.calls.append((parameter, value))
                return outer.answer

        self.mallopt = Mallopt()


@pytest.fixture
def libc(monkeypatch: pytest.MonkeyPatch) -> FakeLibc:
    fake = FakeLibc()
    monkeypatch.setattr(heap.ctypes, "CDLL", lambda name: fake)
    monkeypatch.setattr(heap.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(heap.sys, "platform", "linux")
    for name in heap.ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    return fake


def test_glibc_is_asked_for_both_thresholds_at_1_gib(libc: FakeLibc) -> None:
    assert heap.keep_freed_memory() is True
    assert libc.calls == [(-3, 1 << 30), (-1, 1 << 30)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD (malloc.h)


def test_a_refusal_is_reported(libc: FakeLibc) -> None:
    libc.answer = 0
    assert heap.keep_freed_memory() is False


@pytest.mark.parametrize("name", heap.ENVIRONMENT)
def test_the_users_own_thresholds_are_kept(libc: FakeLibc, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "65536")
    assert heap.keep_freed_memory() is False and libc.calls == []


def test_other_platforms_and_c_libraries_are_left_alone(libc: FakeLibc, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap.platform, "libc_ver", lambda: ("", ""))  # musl, for example
    assert heap.keep_freed_memory() is False
    monkeypatch.setattr(heap.sys, "platform", "darwin")
    assert heap.keep_freed_memory() is False
    assert libc.calls == []


def test_the_optimize_command_asks_before_the_model_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import featviz.cli.optimize as command

    calls: list[str] = []
    monkeypatch.setattr(command, "keep_freed_memory", lambda: calls.append("asked") or True)
    result = CliRunner().invoke(main, ["optimize", "--model", "tinymodels:tiny_features", "--weights", "none",
                                       "--out", str(tmp_path / "out"), "--quiet", "--layer", "features.3",
                                       "--channels", "0", "--steps", "1", "--size", "16"])
    assert result.exit_code == 0, result.output
    assert calls == ["asked"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_on_this_machine_the_real_call_answers_without_error() -> None:
    """The real glibc (where there is one) accepts the values; elsewhere the answer is False."""
    import platform

    assert heap.keep_freed_memory() is (platform.libc_ver()[0] == "glibc"
                                        and not any(name in heap.os.environ for name in heap.ENVIRONMENT))
