"""--cam-score: the faithfulness of each class map (deletion and insertion, RISE) through the
pipeline, summary.json, the manifest, the report and export's closing table.

The module itself (featviz.maps.faithfulness) is checked in test_faithfulness.py; here the wiring is:
the scores in the outputs equal a direct call on the same input, map and target, the table's
means equal the summaries' means, bad maps fail their photo only, the model is left as found.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import featviz
import featviz.maps.camscore
from featviz.cli.main import main
from featviz.errors import UsageError
from featviz.maps.cam import cam_at_input
from featviz.maps.faithfulness import deletion_insertion
from featviz.output.pipeline import Visualizer
from tinymodels import tiny_features

STEPS = 4
COMMON = ("--model", "tinymodels:tiny_features", "--layer", "4", "--resize", "40", "--crop", "32")


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    paths = []
    (tmp_path / "in").mkdir()
    for i, value in enumerate((30, 200, 120)):
        pixels = np.full((40, 48, 3), value, dtype=np.uint8)
        pixels[10 + 3 * i:20 + 3 * i, 12:30] = 255 - value
        path = tmp_path / "in" / f"photo{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def _trapezoid(x: list[float], y: list[float]) -> float:
    return sum((x[k + 1] - x[k]) * (y[k] + y[k + 1]) / 2 for k in range(len(x) - 1))


def test_summary_scores_equal_a_direct_call(tests_on_path, photos, tmp_path) -> None:
    out = tmp_path / "out"
    code, _, err = _cli("export", str(photos[0].parent), *COMMON, "--cam", "gradcam,eigencam", "--target", "top,3",
                        "--cam-score", "--cam-score-steps", str(STEPS), "--save-raw", "--out", str(out), "-q")
    assert code == 0, err
    model = tiny_features().eval()
    prepare = Visualizer("tinymodels:tiny_features", "none", [4], resize=40, crop=32).prepare
    for photo in photos:
        folder = out / photo.stem / "features.4"
        cams = json.loads((folder / "summary.json").read_text())["cams"]
        assert [c["method"] for c in cams] == ["gradcam", "gradcam", "eigencam"]
        x = prepare(photo).tensor[None]
        top = int(model(x).argmax())
        with np.load(folder / "cam.npz") as npz:
            raw = {key: torch.from_numpy(npz[key]) for key in npz.files}
        for record in cams:
            scores = record["scores"]
            assert len(scores["fractions"]) == len(scores["deletion"]) == len(scores["insertion"]) == STEPS + 1
            assert scores["fractions"][0] == 0 and scores["fractions"][-1] == 1
            assert scores["deletion_auc"] == pytest.approx(_trapezoid(scores["fractions"], scores["deletion"]),
                                                           rel=1e-5)
            assert scores["insertion_auc"] == pytest.approx(_trapezoid(scores["fractions"], scores["insertion"]),
                                                            rel=1e-5)
            assert scores["baseline"] == "zero" and scores["steps"] == STEPS
            # Eigen-CAM explains no class: it is scored for the predicted one, recorded in its scores
            target = top if record["target"] is None else record["target"]
            assert scores["target"] == target
            key = f"{record['method']}:{'none' if record['target'] is None else record['target']}"
            saliency = cam_at_input(raw[key][None], (32, 32))
            (direct,) = deletion_insertion(model, x, saliency, [target], steps=STEPS)
            assert scores["deletion_auc"] == pytest.approx(direct.deletion_auc, rel=1e-5, abs=1e-7)
            assert scores["insertion_auc"] == pytest.approx(direct.insertion_auc, rel=1e-5, abs=1e-7)
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    for line in lines:
        summary = json.loads((out / line["output"] / "summary.json").read_text())
        for brief, full in zip(line["cams"], summary["cams"], strict=True):
            assert brief["scores"] == {"deletion_auc": full["scores"]["deletion_auc"],
                                       "insertion_auc": full["scores"]["insertion_auc"],
                                       "steps": STEPS, "baseline": "zero"}
    page = (out / "index.html").read_text()
    deletion = lines[0]["cams"][0]["scores"]["deletion_auc"]
    assert f"deletion {deletion:.3f}" in page


def test_export_prints_the_mean_auc_table(tests_on_path, photos, tmp_path) -> None:
    out = tmp_path / "out"
    code, stdout, err = _cli("export", str(photos[0].parent), *COMMON, "--cam", "gradcam,layercam", "--target", "top2",
                             "--cam-score", "--cam-score-steps", str(STEPS), "--out", str(out), "--json")
    assert code == 0, err
    assert all(json.loads(line)["status"] == "ok" for line in stdout.splitlines())  # stdout stays JSON lines
    assert err.index(" done") < err.index("faithfulness over 12 map(s)")
    table = {m.group(1): (int(m.group(2)), float(m.group(3)), float(m.group(4)))
             for m in re.finditer(r"^(\S+)\s+(\d+)\s+([\d.]+)(?: \*)?\s+([\d.]+)", err, re.M)}
    assert list(table) == ["gradcam", "layercam"]
    for method, (count, deletion, insertion) in table.items():
        scores = [c["scores"] for p in photos
                  for c in json.loads((out / p.stem / "features.4" / "summary.json").read_text())["cams"]
                  if c["method"] == method]
        assert count == len(scores) == 6
        assert deletion == pytest.approx(np.mean([s["deletion_auc"] for s in scores]), abs=5e-5)
        assert insertion == pytest.approx(np.mean([s["insertion_auc"] for s in scores]), abs=5e-5)


def test_show_prints_the_table_before_the_report(tests_on_path, photos, tmp_path) -> None:
    code, stdout, err = _cli("show", str(photos[0]), *COMMON, "--cam", "gradcam", "--cam-score",
                             "--cam-score-steps", str(STEPS), "--out", str(tmp_path / "o"), "-q")
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[-1].endswith("index.html")
    assert any(line.startswith("gradcam ") for line in lines[:-1]) and "faithfulness over 1 map(s)" in stdout


def test_cam_score_needs_cam(tests_on_path, photos, tmp_path) -> None:
    code, _, err = _cli("export", str(photos[0]), *COMMON, "--cam-score", "--out", str(tmp_path / "o"))
    assert code == 2 and "--cam-score" in err and "Hint:" in err and "--cam " in err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").rglob("*.png"))
    with pytest.raises(UsageError):
        featviz.visualize(photos[0], model="tinymodels:tiny_features", layers=[4], weights="none", cam_score=True)
    with pytest.raises(UsageError, match="cam-score-steps"):
        featviz.visualize(photos[0], model="tinymodels:tiny_features", layers=[4], weights="none",
                          cam="gradcam", cam_score=True, cam_score_steps=0)


def test_a_map_that_cannot_be_scored_fails_its_photo_only(tests_on_path, photos, tmp_path, monkeypatch) -> None:
    """The bright photo's saliency becomes NaN on its way into the real deletion_insertion,
    which returns an ImageError for that row: that photo fails, the others are written."""
    real = featviz.maps.camscore.deletion_insertion

    def poisoned(model, inputs, saliency, targets, **kwargs):
        bright = inputs.mean(dim=(1, 2, 3)) > 1.0
        saliency = torch.where(bright[:, None, None], torch.tensor(float("nan")), saliency)
        return real(model, inputs, saliency, targets, **kwargs)

    monkeypatch.setattr(featviz.maps.camscore, "deletion_insertion", poisoned)
    out = tmp_path / "out"
    code, _, err = _cli("export", str(photos[0].parent), *COMMON, "--cam", "gradcam", "--cam-score",
                        "--cam-score-steps", str(STEPS), "--batch-size", "3", "--out", str(out))
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "photo1" in errors[0] and "NaN" in errors[0]
    for ok in ("photo0", "photo2"):
        cams = json.loads((out / ok / "features.4" / "summary.json").read_text())["cams"]
        assert cams[0]["scores"]["steps"] == STEPS
    assert "faithfulness over 2 map(s)" in err


def test_the_model_is_left_as_found(tests_on_path, photos) -> None:
    visualizer = Visualizer("tinymodels:tiny_features", "none", [4], resize=40, crop=32,
                            options=featviz.RenderOptions(cam=("gradcam", "eigencam"), cam_score=True,
                                                          cam_score_steps=STEPS))
    model = visualizer.loaded.module.train()
    model.features[0].weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    (result,) = visualizer.run(photos[0])
    assert all(cam.scores is not None for cam in result.cams)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
