"""Tests for the HTML report (:mod:`featviz.output.report`, issue 6 "An HTML report").

Unit tests read the page's embedded data and check escaping, URLs, deduplication, truncated
manifests, rewrites during a batch and speed. The browser tests open ``index.html`` from disk in
headless Chromium (Debian's ``chromium``) with the page's ``#selftest`` hook: the page checks that
every picture of the shown page loaded and that nothing went wrong, types a query into the filter,
and writes what it found into ``#fv-selftest`` for ``--dump-dom``. Without a browser they skip,
unless ``FEATVIZ_REQUIRE_BROWSER=1`` (set by ``.ci/run``) makes them fail.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from click.testing import CliRunner, Result

import oddimages
from featviz.cli.main import main
from featviz.inputs.discover import find_images
from featviz.output.export import MANIFEST, SUMMARY, Exporter
from featviz.output.pipeline import RenderOptions, Visualizer
from featviz.output.report import PAGE_SIZE, REPORT, ReportWriter, render_html, report_data, write_report

pytestmark = pytest.mark.filterwarnings("error")

TINY = ["--model", "tinymodels:tiny_features", "--weights", "none"]
NASTY = "odd <b>&amp; 'q' \"d\" #1 ?x %20 </script>"
CAFE = "my café Ünïcode"


# --- helpers ------------------------------------------------------------------------------

def export(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["export", *map(str, args), *TINY], catch_exceptions=False)


def page_data(out: Path) -> dict[str, Any]:
    """The JSON the page embeds, parsed back from ``index.html``."""
    text = (out / REPORT).read_text(encoding="utf-8")
    match = re.search(r'<script type="application/json" id="fv-data">(.*?)</script>', text, re.S)
    assert match, "no data block in the page"
    return json.loads(match.group(1))


def write_manifest(out: Path, records: list[dict[str, Any]], tail: str = "") -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    (out / MANIFEST).write_text(lines + tail, encoding="utf-8")


def ok(key: str, layer: str = "features.0", **extra: Any) -> dict[str, Any]:
    record = {"input": f"in/{key}.png", "key": key, "layer": layer, "output": f"{key}/{layer}", "status": "ok",
              "error": None, "shape": [8, 4, 4], "top_channels": [1, 0], "seconds": 0.1, "model": "m", "weights": "w",
              "layer_index": 0, "layer_type": "Conv2d", "files": ["grid.png", "spatial_attention.png",
              "channel_attention.png", "channels/0000.png", "channels/0001.png", "channel_weights.png",
              "channel_weights.csv"], "top_channel_files": ["channels/0001.png", "channels/0000.png"]}
    record.update(extra)
    return record


def error(key: str, message: str, layer: str | None = None) -> dict[str, Any]:
    return {"input": f"in/{key}.png", "key": key, "layer": layer, "output": None, "status": "error",
            "error": message, "shape": None, "top_channels": None, "seconds": 0.0}


def skipped(key: str, layer: str = "features.0") -> dict[str, Any]:
    return {"input": f"in/{key}.png", "key": key, "layer": layer, "output": f"{key}/{layer}", "status": "skipped",
            "error": None, "shape": None, "top_channels": None, "seconds": 0.0}


def fake_summary(out: Path, key: str, layer: str = "features.0", model: str = "from-summary") -> None:
    folder = out / key / layer
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SUMMARY).write_text(json.dumps({
        "model": model, "weights": "w", "layer": {"path": layer, "index": 0, "type": "Conv2d"},
        "activation_shape": [8, 4, 4], "top_channels": [1, 0, 5], "drawn_channels": [0, 1],
        "files": ["grid.png", "spatial_attention.png", "channel_attention.png", "channels/0000.png",
                  "channels/0001.png", "channel_weights.png"]}), encoding="utf-8")


@pytest.fixture(scope="module")
def small_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny export: a plain name, one with spaces and non-ASCII letters, one with HTML and URL
    metacharacters, and one file that is not an image; two layers, with predictions."""
    base = tmp_path_factory.mktemp("report")
    photos = base / "photos"
    photos.mkdir()
    oddimages.make_rgb_png(photos / "plain.png", size=(48, 40), seed=1)
    oddimages.make_rgb_png(photos / f"{CAFE}.png", size=(40, 48), seed=2)
    oddimages.make_rgb_png(photos / f"{NASTY.replace('/', '_')}.png", size=(44, 44), seed=3)
    oddimages.make_truncated_jpeg(photos / "broken.jpg")
    out = base / "out"
    result = export(photos, "--out", out, "--layer", "0,3", "--size", "16", "--predict", "--quiet")
    assert result.exit_code == 1, result.output  # the broken file fails, the others are done
    return out


# --- the data: escaping, URLs, dedupe, truncation -----------------------------------------

def test_export_writes_a_report_with_every_result(small_export: Path) -> None:
    data = page_data(small_export)
    names = sorted({Path(e["name"]).stem for e in data["entries"]})
    assert names == sorted([CAFE, NASTY.replace("/", "_"), "plain"])
    assert len(data["entries"]) == 6  # 3 images x 2 layers
    assert [f["name"].endswith("broken.jpg") for f in data["failed"]] == [True]
    assert data["failed"][0]["error"]
    for entry in data["entries"]:
        assert [caption for caption, _ in entry["views"]] == ["Channel grid", "Spatial attention",
                                                             "Channel attention", "Channel weights"]
        assert entry["model"] == "tinymodels:tiny_features" and entry["weights"]
        assert entry["type"] == "Conv2d" and entry["index"] in (0, 3) and entry["shape"]
        assert len(entry["pred"]) == 5 and all(0 <= p <= 1 for _, p in entry["pred"])
        assert entry["top"] and all(f == f"channels/{c:04d}.png" for c, f in entry["top"])
        folder = small_export / entry["key"] / entry["layer"]
        assert entry["dir"] == "/".join(quote(p, safe="") for p in (*Path(entry["key"]).parts, entry["layer"])) + "/"
        for _, url in entry["views"] + entry["top"] + entry["links"]:
            assert (folder / url).is_file()  # names in this folder need no encoding


def test_names_are_escaped_and_urls_percent_encoded(small_export: Path) -> None:
    page = (small_export / REPORT).read_text(encoding="utf-8")
    nasty = next(e for e in page_data(small_export)["entries"] if e["name"].endswith(".png") and "odd" in e["name"])
    assert nasty["dir"].startswith("odd%20%3Cb%3E%26amp%3B%20%27q%27%20%22d%22%20%231%20%3Fx%20%2520%20%3C_script%3E/")
    cafe = next(e for e in page_data(small_export)["entries"] if CAFE in e["name"])
    assert cafe["dir"].startswith(quote(CAFE, safe="") + "/") and "%C3%A9" in cafe["dir"]
    # nothing of the names reaches the HTML unescaped; only one </script> per script block
    assert "<b>" not in page and "</script>" not in page.split('id="fv-data">', 1)[1].split("</script>", 1)[0]
    assert page.count("</script>") == 2
    assert "\u00e9" in page  # UTF-8, not mangled


def test_title_is_escaped(tmp_path: Path) -> None:
    write_manifest(tmp_path, [ok("a")])
    write_report(tmp_path, title='<script>alert("x")</script> & co')
    page = (tmp_path / REPORT).read_text(encoding="utf-8")
    assert "<title>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co</title>" in page
    assert "<script>alert" not in page


def test_nothing_is_loaded_from_elsewhere(small_export: Path) -> None:
    page = (small_export / REPORT).read_text(encoding="utf-8")
    assert not re.search(r"https?:|//[a-z]", page, re.I)  # no URL with a host anywhere
    assert not re.search(r"<(link|iframe|object|embed)\b|@import|url\(", page, re.I)
    assert "default-src 'none'" in page and "img-src 'self' file:" in page  # and the browser enforces it
    assert re.findall(r'<script\b([^>]*)>', page) == [' type="application/json" id="fv-data"', ""]
    assert "<noscript>" in page and 'loading: selftest ? "eager" : "lazy"' in page


def test_unsafe_output_paths_get_no_links(tmp_path: Path) -> None:
    write_manifest(tmp_path, [ok("a", output="../elsewhere/x"), ok("b", output="/etc/x"), ok("c", output=""),
                              ok("d", output="d/../../x"), ok("e", output="e\\x"), ok("f", output="f/./g")])
    entries = report_data(tmp_path)["entries"]
    assert [(e["key"], e["dir"], e["views"], e["top"], e["links"]) for e in entries] == [
        ("a", None, [], [], []), ("b", None, [], [], []), ("c", None, [], [], []), ("d", None, [], [], []),
        ("e", None, [], [], []), ("f", "f/g/", entries[-1]["views"], entries[-1]["top"], entries[-1]["links"])]
    assert len(entries[-1]["views"]) == 4  # "." is harmless: normalised away


def test_last_line_wins_per_image_and_layer(tmp_path: Path) -> None:
    fake_summary(tmp_path, "s")
    write_manifest(tmp_path, [
        ok("a", model="first"), ok("a", "features.3", model="other layer"), ok("a", model="second"),
        ok("b"), error("b", "b broke", layer="features.0"),           # a layer's error replaces its result
        error("c", "c unreadable"), ok("c"),                          # a later success clears an image error
        ok("d"), error("d", "d unreadable"),                          # a later image error is listed...
        ok("s", model="from-line"), skipped("s"),                     # skipped: the earlier line, still on disk
        skipped("t"),                                                 # skipped, folder gone: not shown
        ok("u"), skipped("u"),                                        # skipped and its summary is gone: dropped
    ])
    data = report_data(tmp_path)
    assert [(e["key"], e["layer"], e["model"]) for e in data["entries"]] == [
        ("a", "features.0", "second"), ("a", "features.3", "other layer"), ("c", "features.0", "m"),
        ("d", "features.0", "m"),  # ...but d's earlier result is still on disk, so it stays too
        ("s", "features.0", "from-line")]
    assert [(f["key"], f["layer"], f["error"]) for f in data["failed"]] == [
        ("b", "features.0", "b broke"), ("d", None, "d unreadable")]


def test_skipped_lines_alone_are_read_from_the_summary(tmp_path: Path) -> None:
    fake_summary(tmp_path, "s")
    write_manifest(tmp_path, [skipped("s")])
    (entry,) = report_data(tmp_path)["entries"]
    assert entry["model"] == "from-summary" and entry["shape"] == [8, 4, 4]
    assert entry["top"] == [[1, "channels/0001.png"], [0, "channels/0000.png"]]  # the drawn ones (not 5)
    assert entry["links"][0] == ["summary.json", "summary.json"]


def test_a_resumed_export_gives_the_same_page(small_export: Path, tmp_path: Path) -> None:
    """An entry from a skipped line (its summary) is the same as from its ok line."""
    copy = tmp_path / "out"
    shutil.copytree(small_export, copy)
    records = [json.loads(line) for line in (copy / MANIFEST).read_text(encoding="utf-8").splitlines()]
    write_manifest(copy, [skipped(r["key"], r["layer"]) | {"input": r["input"]} if r["status"] == "ok" else r
                          for r in records])
    write_report(copy)
    assert page_data(copy) == page_data(small_export)
    assert (copy / REPORT).read_bytes() == (small_export / REPORT).read_bytes()


def test_truncated_last_line_is_ignored_and_recovered_later(tmp_path: Path) -> None:
    fragment = json.dumps(ok("b"))[:40]
    write_manifest(tmp_path, [ok("a")], tail=fragment)
    assert [e["key"] for e in report_data(tmp_path)["entries"]] == ["a"]
    # the next run appends right after the fragment: its line is recovered
    with open(tmp_path / MANIFEST, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(ok("c")) + "\n" + "\n" + "not json\n" + json.dumps(ok("d")) + "\n")
    assert [e["key"] for e in report_data(tmp_path)["entries"]] == ["a", "c", "d"]


def test_entries_sorted_naturally_and_all_embedded_for_paging(tmp_path: Path) -> None:
    keys = [f"img{i}" for i in (10, 2, 1, 33, 100)]
    write_manifest(tmp_path, [ok(k, layer) for k in keys for layer in ("features.3", "features.0")])
    entries = report_data(tmp_path)["entries"]
    assert [(e["key"], e["layer"]) for e in entries][:4] == [
        ("img1", "features.0"), ("img1", "features.3"), ("img2", "features.0"), ("img2", "features.3")]
    assert [e["key"] for e in entries[::2]] == ["img1", "img2", "img10", "img33", "img100"]
    write_report(tmp_path)
    assert page_data(tmp_path)["entries"] == entries
    assert PAGE_SIZE == 50


def test_no_manifest_means_an_empty_page_and_no_writer_output(tmp_path: Path) -> None:
    write_report(tmp_path)
    assert page_data(tmp_path) == {"entries": [], "failed": []}
    empty = tmp_path / "nothing"
    with ReportWriter(empty) as writer:
        writer.update()
    assert not empty.exists() and writer.writes == 0


# --- rewrites -----------------------------------------------------------------------------

def test_writer_rewrites_at_most_every_interval_and_on_close(tmp_path: Path) -> None:
    write_manifest(tmp_path, [ok("a")])
    writer = ReportWriter(tmp_path, interval=3600)
    writer.update()  # the first update writes at once
    assert writer.writes == 1 and [e["key"] for e in page_data(tmp_path)["entries"]] == ["a"]
    with open(tmp_path / MANIFEST, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(ok("b")) + "\n" + json.dumps(ok("c"))[:30])  # and half a line
    started = time.perf_counter()
    for _ in range(20000):
        writer.update()  # not due: cheap
    assert time.perf_counter() - started < 0.5
    assert writer.writes == 1 and [e["key"] for e in page_data(tmp_path)["entries"]] == ["a"]
    writer.close()
    assert writer.writes == 2 and [e["key"] for e in page_data(tmp_path)["entries"]] == ["a", "b"]
    writer.close()
    assert writer.writes == 2


def test_writer_reads_only_what_was_appended(tmp_path: Path) -> None:
    write_manifest(tmp_path, [ok("a")])
    writer = ReportWriter(tmp_path, interval=0)
    writer.update()
    with open(tmp_path / MANIFEST, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(ok("b"))[:25])  # being written
    writer.update()
    assert [e["key"] for e in page_data(tmp_path)["entries"]] == ["a"]
    with open(tmp_path / MANIFEST, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(ok("b"))[25:] + "\n")  # finished
    writer.update()
    assert [e["key"] for e in page_data(tmp_path)["entries"]] == ["a", "b"]
    writer.close()


def test_unchanged_page_is_not_rewritten(tmp_path: Path) -> None:
    write_manifest(tmp_path, [ok("a")])
    write_report(tmp_path)
    stamp = (tmp_path / REPORT).stat().st_mtime_ns
    time.sleep(0.02)
    write_report(tmp_path)
    with ReportWriter(tmp_path, interval=0) as writer:
        writer.update()
    assert (tmp_path / REPORT).stat().st_mtime_ns == stamp and writer.writes == 0


def test_thousands_of_entries_stay_fast(tmp_path: Path) -> None:
    write_manifest(tmp_path,
                   [ok(f"folder/img{i:05d}", layer) for i in range(3000) for layer in ("features.0", "features.3")])
    started = time.perf_counter()
    write_report(tmp_path)
    seconds = time.perf_counter() - started
    size = (tmp_path / REPORT).stat().st_size
    assert len(page_data(tmp_path)["entries"]) == 6000
    assert seconds < 5, seconds
    assert size < 6000 * 1000, size  # well under a kilobyte per entry


def test_report_is_written_while_the_batch_goes_on_and_after_a_crash(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    paths = [oddimages.make_rgb_png(tmp_path / "in" / f"img{i}.png", size=(24, 20), seed=i) for i in range(4)]
    images = find_images([str(tmp_path / "in")]).images
    visualizer = Visualizer("tinymodels:tiny_features", "none", [0], options=RenderOptions(size=8))
    forward, calls = visualizer.forward, []

    class Crash(Exception):
        pass

    def crashing_forward(batch: Any) -> Any:
        calls.append(len(batch))
        if len(calls) == 3:
            raise Crash("the machine went away")
        return forward(batch)

    monkeypatch.setattr(visualizer, "forward", crashing_forward)
    out = tmp_path / "out"
    seen: list[int] = []

    def on_record(record: dict[str, Any]) -> None:  # the page is updated before the record is passed on
        seen.append(len(page_data(out)["entries"]))

    exporter = Exporter(visualizer, out, batch_size=1, workers=1, on_record=on_record)
    with pytest.raises(Crash):
        exporter.run(images)
    assert seen and seen[0] == 1  # the first line already had a page
    assert [Path(e["name"]).name for e in page_data(out)["entries"]] == ["img0.png", "img1.png"]
    assert len(paths) == 4


def test_show_writes_the_manifest_and_the_report(tmp_path: Path, cat_photo: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["show", str(cat_photo), *TINY, "--size", "8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out / "chelsea" / "features.0" / "grid.png") in result.output.splitlines()  # still lists its files
    assert (out / MANIFEST).is_file()
    (entry,) = page_data(out)["entries"]
    assert entry["name"] == str(cat_photo) and entry["dir"] == "chelsea/features.0/"


def test_no_report_without_a_manifest(tmp_path: Path, cat_photo: Path) -> None:
    visualizer = Visualizer("tinymodels:tiny_features", "none", [0], options=RenderOptions(size=8))
    out = tmp_path / "out"
    Exporter(visualizer, out, manifest=False).run(find_images([str(cat_photo)]).images)
    assert not (out / REPORT).exists() and not (out / MANIFEST).exists()


def test_render_html_is_deterministic(small_export: Path) -> None:
    data = report_data(small_export)
    assert render_html(data) == render_html(json.loads(json.dumps(data))) == (small_export / REPORT).read_bytes()


# --- a real browser -----------------------------------------------------------------------

def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    message = "no Chromium found (Debian: apt-get install chromium); .ci/run installs it"
    if os.environ.get("FEATVIZ_REQUIRE_BROWSER") == "1":
        pytest.fail(message + ", and FEATVIZ_REQUIRE_BROWSER=1 requires the browser tests to run")
    pytest.skip(message)


@pytest.fixture
def browser(tmp_path: Path) -> Any:
    """Open a URL in headless Chromium; returns (DOM after scripts ran, console lines on stderr)."""
    binary = _chromium()

    def run(url: str, *extra: str, budget_ms: int = 15000) -> tuple[str, list[str]]:
        profile = tmp_path / f"chromium-profile-{time.monotonic_ns()}"
        argv = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--disable-extensions", "--no-first-run", "--no-default-browser-check",
                "--mute-audio", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                f"--virtual-time-budget={budget_ms}", *extra, url]
        done = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=180,
                              env={**os.environ, "HOME": str(tmp_path)})
        assert done.returncode == 0, done.stderr[-3000:]
        console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
        return done.stdout, console

    return run


def selftest(browser: Any, page: Path, query: str = "") -> dict[str, Any]:
    url = page.resolve().as_uri() + "#selftest" + (f"={quote(query)}" if query else "")
    dom, console = browser(url, "--dump-dom")
    match = re.search(r'<pre id="fv-selftest"[^>]*>(.*?)</pre>', dom, re.S)
    assert match and match.group(1), f"the page did not finish its self-test:\n{dom[-2000:]}"
    result = json.loads(html.unescape(match.group(1)))
    assert console == [], console  # the page writes nothing to the console
    return result


def test_browser_loads_every_picture_without_errors(browser: Any, small_export: Path, tmp_path: Path) -> None:
    moved = tmp_path / "moved elsewhere é"
    shutil.copytree(small_export, moved)  # relative links: the folder can move
    result = selftest(browser, moved / REPORT, query="CAFÉ")
    assert result["problems"] == []
    first = result["first"]
    assert first["broken"] == [] and first["images"] >= 6 * (4 + 1)  # four pictures and the top channels each
    assert sorted(Path(n).stem for n in first["shown"]) == sorted([CAFE, CAFE, "plain", "plain",
                                                                 NASTY.replace("/", "_"), NASTY.replace("/", "_")])
    assert result["failed"] == 1 and first["failed_items"] == 1
    filtered = result["filtered"]
    assert filtered["matching"] == 2 and len(filtered["shown"]) == 2  # fewer entries: only the café photo
    assert all(CAFE in name for name in filtered["shown"])  # case-insensitive, non-ASCII
    assert filtered["broken"] == [] and filtered["images"] > 0


def test_browser_pages_through_many_entries(browser: Any, small_export: Path, tmp_path: Path) -> None:
    out = tmp_path / "many"
    shutil.copytree(small_export, out)
    record = next(json.loads(line) for line in (out / MANIFEST).read_text(encoding="utf-8").splitlines()
                  if json.loads(line)["status"] == "ok")
    write_manifest(out, [record | {"input": f"photos/p{i:03d}.png", "key": f"p{i:03d}"} for i in range(120)])
    write_report(out)
    result = selftest(browser, out / REPORT, query="p11")
    assert result["problems"] == [] and result["total"] == 120 and result["pages"] == 3
    assert len(result["first"]["shown"]) == PAGE_SIZE and result["first"]["broken"] == []
    assert result["filtered"]["matching"] == 10  # p110..p119
    assert "page2" not in result  # the filtered list fits on one page


def test_browser_second_page(browser: Any, small_export: Path, tmp_path: Path) -> None:
    out = tmp_path / "many"
    shutil.copytree(small_export, out)
    record = next(json.loads(line) for line in (out / MANIFEST).read_text(encoding="utf-8").splitlines()
                  if json.loads(line)["status"] == "ok")
    write_manifest(out, [record | {"input": f"photos/p{i:03d}.png", "key": f"p{i:03d}"} for i in range(75)])
    write_report(out)
    result = selftest(browser, out / REPORT)
    assert result["problems"] == [] and result["pages"] == 2
    assert result["page2"] == {"page": 2, "shown": 25, "status": "Showing 51\u201375 of 75"}


def test_browser_shows_a_transformer_export(browser: Any, tmp_path: Path) -> None:
    """The trained tiny ViT with the transformer maps (heads, rollout, relevance, PCA colours):
    every picture the report links loads in Chromium, and the console stays clean."""
    import numpy as np
    from PIL import Image

    root = Path(__file__).resolve().parent.parent
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(7)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    out = tmp_path / "out"
    args = ["export", photos, "--out", out, "--model", f"{root / 'examples' / 'vit_shapes.py'}:build",
            "--weights", root / "examples" / "vit_shapes.safetensors", "--resize", "64", "--crop", "64",
            "--heads", "--cam", "rollout,relevance", "--pca-tokens", "--vit-stats", "--artifacts", "--top-k", "2",
            "--quiet"]
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    shown = selftest(browser, out / REPORT)
    assert shown["problems"] == [] and shown["failed"] == 0
    first = shown["first"]
    assert first["broken"] == []
    linked = set(re.findall(r'(?:heads/[\w.-]+|cam/[\w:.-]+|pca)\.png', (out / REPORT).read_text(encoding="utf-8")))
    assert {"heads/mean.png", "cam/rollout.png", "pca.png"} <= linked
    data = page_data(out)
    captions = {view[0]: view[1] for entry in data["entries"] for view in entry["views"]}
    assert captions["Attention statistics (every block and head)"] == "../attention_statistics.png"
    assert captions["Artifact tokens"] == "../artifacts.png"
    assert first["images"] >= 2 * 9  # each photo: grid, 2 overlays, chart, PCA, heads, statistics, artifacts, …
    assert any(name.startswith("cam/relevance-") for name in linked)
