"""Issue 20, item 6: edited or corrupted atlas states given to ``--merge``. On main, inf or
negative scores, an unknown key, a channel-count mismatch, a short entry, a null input, a
10^9-pixel photo size or a 200k-entry list gave tracebacks; NaN or string scores were dropped
silently; ``positive = -7`` gave a negative fraction. Now the whole state is checked against its
schema first: exit 2, one sentence naming the file and the field.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import oddimages
from featviz.cli.main import main

ATLAS = ["--model", "tinymodels:tiny_features", "--weights", "none", "--top", "2", "--quiet"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two finished shard folders of one small collection (made once for the module)."""
    root = tmp_path_factory.mktemp("shards")
    for i in range(3):
        oddimages.make_rgb_png(root / "in" / f"p{i}.png", size=(24, 20), seed=i)
    for i in (1, 2):
        result = CliRunner().invoke(main, ["atlas", str(root / "in"), "--shard", f"{i}/2", "--out",
                                           str(root / f"s{i}"), *ATLAS], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    return root / "s1", root / "s2"


def _table(state: dict[str, Any]) -> dict[str, Any]:
    return state["layers"]["features.0"]


def _first_key(state: dict[str, Any]) -> str:
    return next(iter(state["images"]))


def _set_score(value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(state: dict[str, Any]) -> None:
        _table(state)["lists"][0][0][0] = value
    return edit


EDITS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "inf score": (_set_score(float("inf")), "layers.features.0.lists[0][0][0] must be a finite number"),
    "nan score": (_set_score(float("nan")), "layers.features.0.lists[0][0][0] must be a finite number"),
    "string score": (_set_score("high"), "layers.features.0.lists[0][0][0] must be a finite number"),
    "score above the maximum": (_set_score(1e30), "layers.features.0.lists[0][0][0] is 1e+30, above"),
    "negative positive count": (lambda s: _table(s)["positive"].__setitem__(0, -7),
                                "layers.features.0.positive[0] is -7, outside"),
    "unknown key": (lambda s: s.__setitem__("surprise", 1), "field surprise is not a field of an atlas state"),
    "unknown image key": (lambda s: s["images"][_first_key(s)].__setitem__("extra", 1), ".extra is not a field"),
    "channel count": (lambda s: _table(s).__setitem__("channels", 9), "layers.features.0.lists has 8 entries, not 9"),
    "short entry": (lambda s: _table(s)["lists"][0].__setitem__(0, [1.0, "p0"]), "must be [score, key, y, x]"),
    "null input": (lambda s: s["images"][_first_key(s)].__setitem__("input", None), ".input must be text"),
    "huge photo": (lambda s: s["images"][_first_key(s)].__setitem__("photo", [100000, 10000]),
                   "is 100000x10000 pixels, more than featviz ever decodes"),
    "200k entries": (lambda s: _table(s)["lists"].__setitem__(0, [[0.0, "p0", 0, 0]] * 200_000),
                     "layers.features.0.lists[0] has 200000 entries, more than 2"),
    "unknown photo key": (lambda s: _table(s)["lists"][0][0].__setitem__(1, "nobody"),
                          "must be the key of a photo recorded in images"),
    "negative done": (lambda s: s.__setitem__("done", -1), "field done is -1, outside"),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_an_edited_state_is_one_sentence_naming_file_and_field(case: str, shards: tuple[Path, Path],
                                                               tmp_path: Path) -> None:
    edit, words = EDITS[case]
    edited = tmp_path / "s1"
    shutil.copytree(shards[0], edited)
    state = json.loads((edited / "atlas-state.json").read_text())
    edit(state)
    (edited / "atlas-state.json").write_text(json.dumps(state))
    result = CliRunner().invoke(main, ["atlas", "--merge", str(edited), str(shards[1]), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2, (result.output, result.exception)
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"Error: {edited / 'atlas-state.json'} is not a valid atlas state: field "), first
    assert words in first
    assert not (tmp_path / "m").exists()


def test_shards_whose_channel_counts_differ_are_refused(shards: tuple[Path, Path], tmp_path: Path) -> None:
    """Each state valid on its own, but one layer's channels differ between them."""
    edited = tmp_path / "s2"
    shutil.copytree(shards[1], edited)
    state = json.loads((edited / "atlas-state.json").read_text())
    table = _table(state)
    table["channels"] += 1
    for name, fill in (("lists", []), ("mean_sum", "0"), ("max", None), ("positive", 0)):
        table[name].append(copy.deepcopy(fill))
    (edited / "atlas-state.json").write_text(json.dumps(state))
    result = CliRunner().invoke(main, ["atlas", "--merge", str(shards[0]), str(edited), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert "layer features.0 has 8 channels in one and 9 in the other" in result.stderr


def test_the_untouched_states_still_merge(shards: tuple[Path, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["atlas", "--merge", *map(str, shards), "--out", str(tmp_path / "m"), "--quiet"])
    assert result.exit_code == 0, result.output
