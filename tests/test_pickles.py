"""Whole pickled models and checkpoints with Python objects: refused with a clear reason
(unpickling runs code), loaded with --trust-pickle for a file the user trusts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import tinymodels
from featviz.cli.main import main
from featviz.errors import ModelError
from featviz.models.build import load_model
from featviz.models.checkpoints import MissingPickledCode, UntrustedPickle


def same_weights(module: torch.nn.Module, reference: torch.nn.Module) -> bool:
    theirs = reference.state_dict()
    return module.state_dict().keys() == theirs.keys() and all(
        torch.equal(v, theirs[k]) for k, v in module.state_dict().items())


@pytest.fixture
def whole_model(tmp_path: Path) -> Path:
    path = tmp_path / "whole.pt"
    torch.save(tinymodels.tiny_features(), path)  # the class is tinymodels.TinyFeatures
    return path


def test_a_whole_model_is_refused_with_the_reason_and_the_opt_in(whole_model: Path, cat_photo: Path,
                                                                  tmp_path: Path) -> None:
    result = CliRunner().invoke(main,
                                ["show", str(cat_photo), "--model", str(whole_model), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"Error: {whole_model} holds a pickled Python object (tinymodels.TinyFeatures), not only tensors; featviz "
        "does not load it, because unpickling runs code from the file",
        "Hint: save model.state_dict() and pass that (with --model naming the architecture), or, only for a file "
        "you trust, add --trust-pickle"]
    assert not (tmp_path / "o").exists()


def test_trust_pickle_loads_a_whole_model(whole_model: Path, cat_photo: Path, tmp_path: Path) -> None:
    loaded = load_model(str(whole_model), trust_pickle=True)
    assert loaded.source == "pickle" and type(loaded.module) is tinymodels.TinyFeatures
    assert same_weights(loaded.module, tinymodels.tiny_features())
    out = tmp_path / "o"
    result = CliRunner().invoke(main, ["show", str(cat_photo), "--model", str(whole_model), "--trust-pickle",
                                       "--layer", "3", "--size", "8", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert (out / "chelsea" / "features.3" / "grid.png").is_file()


def test_a_checkpoint_with_python_objects_needs_trust(tmp_path: Path) -> None:
    reference = tinymodels.tiny_features()
    torch.manual_seed(7)
    for parameter in reference.parameters():  # weights that differ from the factory's own
        parameter.data.normal_()
    path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": reference.state_dict(), "epoch": 3, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UntrustedPickle, match=r"\(argparse\.Namespace\), not only tensors"):
        load_model("tinymodels:tiny_features", str(path))
    loaded = load_model("tinymodels:tiny_features", str(path), trust_pickle=True)
    assert same_weights(loaded.module, reference)
    # a whole model given as --weights, trusted: its state dict is used
    whole = tmp_path / "whole-as-weights.pt"
    torch.save(reference, whole)
    assert same_weights(load_model("tinymodels:tiny_features", str(whole), trust_pickle=True).module, reference)


def test_a_state_dict_given_as_model_says_to_use_weights(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    torch.save(tinymodels.tiny_features().state_dict(), path)
    with pytest.raises(ModelError, match="holds weights") as caught:
        load_model(str(path))
    assert "--weights" in caught.value.hint


def test_a_trusted_pickle_whose_class_is_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "fv_gone_model.py").write_text(
        "import torch\nclass Gone(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.c = torch.nn.Conv2d(3, 2, 1)\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    import fv_gone_model

    path = tmp_path / "gone.pt"
    torch.save(fv_gone_model.Gone(), path)
    monkeypatch.delitem(sys.modules, "fv_gone_model")
    sys.path.remove(str(folder))
    with pytest.raises(MissingPickledCode, match="cannot be unpickled"):
        load_model(str(path), trust_pickle=True)
