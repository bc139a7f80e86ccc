"""Every usage error reads the same: one ``Error: …`` line and one ``Hint: …`` line on stderr,
exit 2, whether click found it (a bad option value, an unknown option or command) or featviz."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from featviz.cli.main import main


@pytest.mark.parametrize(("args", "error", "hint"), [
    (["show", "x.jpg", "--size", "abc"], "invalid value for '--size': 'abc' is not a valid integer",
     "run `featviz show --help` for the options"),
    (["show"], "missing argument 'IMAGES...'", "run `featviz show --help` for the options"),
    (["show", "x.jpg", "--bogus"], "no such option '--bogus'", "run `featviz show --help` for the options"),
    (["shwo", "x.jpg"], "no such command 'shwo'", "run `featviz --help` for the options"),
    (["export", "x.jpg", "--shard", "5"], "invalid value for --shard: '5' is not I/N, e.g. 1/4",
     "run `featviz export --help` for the options"),
    (["show", "x.jpg", "--sort-by", "size"], "invalid value for '--sort-by'",
     "run `featviz show --help` for the options"),
    (["show", "x.jpg", "--weights", "none", "--top-k", "0"], "--top-k must be at least 1, got 0",
     "leave --top-k out to draw every channel, or give a number of channels such as --top-k 8"),
    (["show", "x.jpg", "--weights", "none", "--max-channels", "0"], "--max-channels must be at least 1, got 0",
     "leave --max-channels out"),
])
def test_usage_errors_read_alike(args: list[str], error: str, hint: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"Error: {error}") and lines[1].startswith(f"Hint: {hint}")
    assert "Usage:" not in result.output and "Traceback" not in result.output
