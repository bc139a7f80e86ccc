"""The ``featviz`` command: parse options, call the library, print. No computation here.

This module holds the group and show, export, sweep and layers; ``atlas`` lives in
:mod:`featviz.cli.atlas`, and what the commands share (error display, option bundles) in
:mod:`featviz.cli.common`.

Heavy modules (torch, torchvision, matplotlib) are imported inside the commands, so
``featviz --help`` stays instant.

Exit codes: 0 everything done; 1 some images failed (the others were done), or the output
folder stopped taking files (disk full) and the run stopped cleanly; 2 usage error (bad option,
unknown model, weights that do not fit, layer out of range, an --out that cannot be written),
reported before any image is processed. A closed stdout (``--json | head``) does not change it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from featviz import __version__
from featviz.cli.atlas import atlas
from featviz.cli.common import (
    EXIT_CODES,
    FeatvizGroup,
    cam_methods,
    cam_options,
    cam_score_options,
    help_sections,
    model_options,
    parse_shard,
    preprocess_options,
    progress_enabled,
    render_options,
    report_found,
    reports_errors,
    run_options,
    show_default_layer,
    show_notes,
    transformer_options,
)
from featviz.cli.optimize import optimize
from featviz.cli.spectrum import spectrum
from featviz.errors import UsageError


def _build_visualizer(params: dict[str, Any]) -> Any:
    from featviz.maps.attention import parse_frequencies
    from featviz.output.pipeline import RenderOptions, Visualizer, parse_channels

    options = RenderOptions(
        size=params["size"], cmap=params["cmap"], heat_cmap=params["heat_cmap"], alpha=params["alpha"],
        labels=params["labels"], channels=parse_channels(params["channels"]), top_k=params["top_k"],
        max_channels=params["max_channels"], sort_by=params["sort_by"], spatial=params["spatial"],
        channel=params["channel"], attention=params["attention"],
        dct_frequencies=parse_frequencies(params["dct_frequencies"]),
        stn=params["stn"], normalize=params["normalize"], clip_percentile=params["clip_percentile"],
        predict=params["predict"], save_raw=params["save_raw"], png_level=params["png_level"],
        cam=cam_methods(params["cam"]), target=tuple(params["target"]), cam_batch=params["cam_batch"],
        cam_score=params.get("cam_score", False), cam_score_steps=params.get("cam_score_steps", 16),
        heads=params.get("heads", False), heads_threshold=params.get("heads_threshold"),
        heads_upsample=params.get("heads_upsample", "nearest"), rollout_fusion=params.get("rollout_fusion", "mean"),
        rollout_discard=params.get("rollout_discard", 0.0), rollout_start=params.get("rollout_start", 0),
    )
    visualizer = Visualizer(params["model"], params["weights"], params["layers"] or None, seed=params["seed"],
                            device=params["device"], resize=params["resize"], crop=params["crop"],
                            no_crop=params["no_crop"], options=options, weights_file=params["weights_file"],
                            trust_pickle=params["trust_pickle"], model_kwargs=params["model_kwargs"])
    show_notes(visualizer.loaded)
    show_default_layer(visualizer)
    return visualizer




class _StdoutLines:
    """Lines on stdout that a closed pipe (``export --json | head -1``) cannot stop: the first
    ``BrokenPipeError`` says so once on stderr, stdout is pointed at ``/dev/null`` (so that
    Python's final flush stays quiet) and the batch goes on: the manifest has every record."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.closed = False

    def echo(self, line: str) -> None:
        if self.closed:
            return
        try:
            click.echo(line)
            sys.stdout.flush()
        except BrokenPipeError:
            self.closed = True
            import os

            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
            except (OSError, ValueError):  # no real file descriptor (an in-process test runner)
                pass
            click.echo("warning: stdout was closed; the batch went on, every record is in "
                       f"{self.out / 'manifest.jsonl'}",
                       err=True)




def _run(images: list[Any], params: dict[str, Any], *, manifest: bool, stream_records: bool,
         skip_existing: bool = False, collect: bool = False,
         scored: list[dict[str, Any]] | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """Shared by show and export: build the model, run the batch, report bad images on stderr.
    ``scored`` (--cam-score) collects each ok line's methods and AUCs for the closing table."""
    from featviz.output.export import Exporter

    visualizer = _build_visualizer(params)
    estimate = visualizer.output_estimate()
    if estimate.too_many and not params["quiet"]:
        click.echo(f"warning: this writes about {estimate.files:,} files (~{estimate.bytes / 1e6:,.0f} MB) per image "
                   f"({estimate.channel_files:,} channel PNGs over {estimate.layers} layer(s)); to narrow it, draw "
                   "fewer channels (--top-k 16, --channels 0-15) or name fewer layers (--layer 0,3)", err=True)
    records: list[dict[str, Any]] = []
    from featviz.cli.progress import progress_bar

    progress = progress_bar(len(images), progress_enabled(params))

    stdout = _StdoutLines(params["out"])

    def on_record(record: dict[str, Any]) -> None:
        if record["status"] == "error":  # above the bar, which is redrawn below it
            progress.write(f"error: {record['error']}", file=sys.stderr)
        if record.get("nonfinite"):
            progress.write(f"warning: {record['input']}: layer {record['layer']} has {record['nonfinite']} NaN or "
                           "infinite activations; they are left out of the statistics (see summary.json)",
                           file=sys.stderr)
        if scored is not None and record["status"] in ("ok", "skipped") and record.get("cams"):
            # a skipped line repeats the finished record's areas: the table covers the whole collection
            scored.append({"status": "ok", "skipped": record["status"] == "skipped",
                           "cams": [{"method": c["method"], "target": c["target"],
                                     "scores": c.get("scores")} for c in record["cams"]]})
        if stream_records:
            stdout.echo(json.dumps(record, ensure_ascii=False))
        elif collect:  # show lists what it wrote; export's record is the manifest (memory stays flat)
            records.append(record)

    from featviz.cli.signals import exit_code, stop_on_signals

    with stop_on_signals() as stop:
        exporter = Exporter(visualizer, params["out"], batch_size=params["batch_size"], workers=params["workers"],
                            skip_existing=skip_existing, manifest=manifest, on_record=on_record,
                            on_image_done=progress.update, stop=stop)
        try:
            report = exporter.run(images)
        finally:
            progress.close()
    if report.stopped:
        click.echo(f"stopped by {stop.name}: {report.ok} done, {report.skipped} skipped, {report.failed} failed; every "
                   f"file written is whole and in {params['out'] / 'manifest.jsonl'}; rerun the same command with "
                   "--skip-existing to continue", err=True)
        sys.exit(exit_code(stop))
    # Records arrive as the encoding threads finish; show lists them in input and layer order.
    image_order = {str(image.key): i for i, image in enumerate(images)}
    layer_order = {ref.path: i for i, ref in enumerate(visualizer.layers)}
    records.sort(key=lambda r: (image_order.get(r["key"], len(image_order)), layer_order.get(r["layer"], -1)))
    return report, records


@click.group(cls=FeatvizGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="featviz")
def main() -> None:
    """Show what a convolutional network sees: channel grids, per-channel maps and attention
    overlays for a layer of a torchvision (or your own) CNN."""


@main.command(epilog=EXIT_CODES)
@help_sections(Output=("open_viewer",))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@model_options
@preprocess_options
@render_options
@cam_options
@transformer_options
@cam_score_options
@run_options
@click.option("--open", "open_viewer", is_flag=True, help="Open the report (OUT/index.html) in the system viewer.")
@reports_errors
def show(images: tuple[Path, ...], open_viewer: bool, **params: Any) -> None:
    """Visualise LAYER activations of each IMAGE into OUT/<image stem>/<layer>/.

    Writes grid.png, channels/NNNN.png, spatial_attention.png, channel_attention.png and
    summary.json per image and layer, then prints the paths it wrote and, last, the report
    OUT/index.html, which shows them all (--json: one JSON document). Like export, it also
    appends to OUT/manifest.jsonl.
    """
    from pathlib import PurePosixPath

    from featviz.inputs.discover import InputImage
    from featviz.output.layout import stem_keys

    inputs = [InputImage(path=path, key=PurePosixPath(key))
              for path, key in zip(images, stem_keys(images), strict=True)]
    scored: list[dict[str, Any]] | None = [] if params["cam_score"] else None
    report, records = _run(inputs, params, manifest=True, stream_records=False, collect=True, scored=scored)
    for record in records:
        record["files"] = _written_files(params["out"], record)
    page = _report_page(params["out"])
    if params["as_json"]:
        click.echo(json.dumps({"ok": report.ok, "failed": report.failed, "report": page and str(page),
                               "results": records}, indent=2, ensure_ascii=False))
    else:
        for record in records:
            for file in record["files"]:
                click.echo(file)
        if params["predict"]:
            for line in _prediction_lines(params["out"], records):
                click.echo(line)
        if scored is not None and report.ok:
            click.echo(_auc_table(scored))
        if page and report.ok:  # when nothing was drawn, stdout stays empty (the errors are on stderr)
            click.echo(str(page))
    if open_viewer and page:
        from featviz.cli.viewer import open_file

        problem = open_file(page)
        if problem:
            click.echo(f"could not open the report: {problem}; it is {page.resolve()}", err=True)
    sys.exit(report.exit_code)


def _report_page(out: Path) -> Path | None:
    """OUT/index.html, where the run left one (it shows every image and layer written)."""
    from featviz.output.report import REPORT

    page = out / REPORT
    return page if page.is_file() else None


def _prediction_lines(out: Path, records: list[dict[str, Any]]) -> list[str]:
    """``prediction: <image>: label (p%), ...``, once per image."""
    lines, seen = [], set()
    for record in records:
        if record["status"] != "ok" or record["input"] in seen:
            continue
        seen.add(record["input"])
        summary = json.loads((out / record["output"] / "summary.json").read_text(encoding="utf-8"))
        top = ", ".join(f"{p['label']} ({_percent(p['probability'])})" for p in summary.get("predictions", []))
        lines.append(f"prediction: {record['input']}: {top}")
    return lines


def _percent(probability: float | None) -> str:
    """``12.3%``; ``n/a`` for the null a NaN probability is written as."""
    return "n/a" if probability is None else f"{100 * probability:.1f}%"


def _written_files(out: Path, record: dict[str, Any]) -> list[str]:
    if record["status"] != "ok":
        return []
    folder = out / record["output"]
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    return [str(folder / name) for name in [*summary["files"], "summary.json"]]


@main.command(epilog=EXIT_CODES)
@help_sections(Run=("recursive", "skip_existing", "shard"))
@click.argument("inputs", nargs=-1, required=True)
@model_options
@preprocess_options
@render_options
@cam_options
@transformer_options
@cam_score_options
@run_options
@click.option("--recursive", "-r", is_flag=True, help="Descend into sub-folders.")
@click.option("--skip-existing", is_flag=True, help="Skip images whose outputs are complete (resume).")
@click.option("--shard", default=None, metavar="I/N", help="Process only the I-th of N deterministic slices (1-based).")
@reports_errors
def export(inputs: tuple[str, ...], recursive: bool, skip_existing: bool, shard: str | None, **params: Any) -> None:
    """Export every image in INPUTS (files, folders, quoted globs, or - for paths on stdin).

    Outputs mirror each image's path relative to the folder it was found in:
    OUT/<relative path without suffix>/<layer>/. One line per image and layer is appended to
    OUT/manifest.jsonl as it finishes (--json streams the same lines to stdout).
    """
    from featviz.inputs.discover import find_images
    from featviz.output.export import shard as take_shard

    shard_index = parse_shard(shard)
    found = find_images(list(inputs), recursive=recursive, stdin=sys.stdin if "-" in inputs else None,
                        out=params["out"])
    report_found(found, params["quiet"])
    images = take_shard(found.images, *shard_index) if shard_index else found.images
    scored: list[dict[str, Any]] | None = [] if params["cam_score"] else None
    report, _ = _run(images, params, manifest=True, stream_records=params["as_json"],
                     skip_existing=skip_existing, scored=scored)
    if not params["quiet"]:
        page = _report_page(params["out"])
        where = f"; report: {page}" if page else ""
        failed = report.failed + len(found.missing)  # a missing input is a failure too: the counts match the exit code
        click.echo(f"{report.ok} done{_redone_note(report.redone)}, {report.skipped} skipped, {failed} failed "
                   f"-> {params['out']}{where}", err=True)
        if scored is not None:
            click.echo(_auc_table(scored), err=True)
    sys.exit(1 if report.failed or found.missing else 0)


def _auc_table(scored: list[dict[str, Any]]) -> str:
    """--cam-score: the run's mean deletion/insertion AUC per method, as a text table."""
    from featviz.maps.camscore import auc_rows_from_records
    from featviz.maps.faithfulness import format_auc_table

    rows = auc_rows_from_records(scored)
    count = sum(row.count for row in rows)
    if not count:
        return "faithfulness: no class map was scored (every photo failed, or none has scores)"
    earlier = sum(row.count for row in auc_rows_from_records([r for r in scored if r.get("skipped")]))
    note = f" ({earlier} from photos skipped as already done)" if earlier else ""
    return f"faithfulness over {count} map(s){note}, mean AUC per method:\n{format_auc_table(rows)}"


def _redone_note(redone: dict[str, int]) -> str:
    """`` (5 redone: --cmap changed (gray -> viridis))`` after the done count, or nothing."""
    if not redone:
        return ""
    reason, _ = max(redone.items(), key=lambda item: item[1])
    more = f"; {len(redone) - 1} other reason(s) in the manifest" if len(redone) > 1 else ""
    return f" ({sum(redone.values())} redone: {reason}{more})"




@main.command(epilog=EXIT_CODES)
@help_sections(Layer=("layers",), Attention=("spatial",), Drawing=("heat_cmap", "alpha"), Output=("out", "as_json"))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@model_options
@preprocess_options
@click.option("--layer", "-l", "layers", multiple=True,
              help="Stages to show (indices or module paths, comma-separated) [default: after each ReLU/pool of "
                   "`features`, else the convolution blocks, e.g. ResNet's conv1, layer1..layer4].")
@click.option("--spatial", type=click.Choice(["mean", "max", "meanmax"]), default=None,
              help="Spatial attention [default: mean].")
@click.option("--heat-cmap", default="jet", show_default=True, help="Matplotlib colormap for the overlays.")
@click.option("--alpha", default=0.5, show_default=True, type=float, help="Opacity of the heat map over the photo.")
@click.option("--out", "-o", "out", default="featviz-out", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--json", "as_json", is_flag=True, help="A JSON document on stdout.")
@cam_options
@transformer_options
@reports_errors
def sweep(images: tuple[Path, ...], model: str, model_kwargs: dict[str, Any] | None, weights: str,
          weights_file: Path | None, trust_pickle: bool, seed: int, device: str, resize: int | None,
          crop: int | None, no_crop: bool, layers: tuple[str, ...], spatial: str | None, heat_cmap: str,
          alpha: float, out: Path, as_json: bool, cam: str | None, target: tuple[str, ...], cam_batch: int,
          heads: bool, heads_threshold: float | None, heads_upsample: str, rollout_fusion: str, rollout_discard: float,
          rollout_start: int) -> None:
    """How a network's attention changes with depth: OUT/<image stem>/sweep.png shows the
    spatial-attention overlay at each stage side by side, with the stage's name and activation
    shape, all captured in one forward pass per image. With --cam, each stage shows the class
    activation map of the first method and target instead; with --heads (a vision transformer's
    blocks), the mean of the heads' attention."""
    from featviz.errors import ImageError, OutputError
    from featviz.output.layout import (
        atomic_write,
        check_output_folder,
        ensure_inside,
        is_fatal_write_error,
        png_bytes,
        stem_keys,
    )
    from featviz.output.pipeline import RenderOptions, sweep_visualizer

    # Building the visualizer resolves and checks the layers: usage errors come before any image.
    visualizer = sweep_visualizer(model, weights, layers, seed=seed, device=device, resize=resize, crop=crop,
                                  no_crop=no_crop,
                                  options=RenderOptions(spatial=spatial, heat_cmap=heat_cmap, alpha=alpha,
                                                        cam=cam_methods(cam), target=target, cam_batch=cam_batch,
                                                        heads=heads, heads_threshold=heads_threshold,
                                                        heads_upsample=heads_upsample, rollout_fusion=rollout_fusion,
                                                        rollout_discard=rollout_discard, rollout_start=rollout_start),
                                  weights_file=weights_file, trust_pickle=trust_pickle,
                                  model_kwargs=model_kwargs)
    show_notes(visualizer.loaded)
    check_output_folder(out)
    documents, failed = [], 0
    for path, key in zip(images, stem_keys(images), strict=True):
        try:
            picture, results = visualizer.sweep(path)
            written = ensure_inside(out, out / key / "sweep.png")  # a link planted in OUT fails this photo
        except (ImageError, UsageError) as error:
            click.echo(f"error: {error}", err=True)
            failed += 1
            continue
        try:
            atomic_write(written, png_bytes(picture, 1))
        except OSError as exc:
            if is_fatal_write_error(exc):
                raise OutputError(f"cannot write {written} ({exc.strerror}); the run stopped",
                                  hint="free space or fix the output folder, then run sweep again") from None
            click.echo(f"error: {written}: {exc}", err=True)
            failed += 1
            continue
        documents.append({"input": str(path), "output": str(written),
                          "stages": [{"layer": r.layer.path, "shape": list(r.activations.shape)} for r in results]})
        if not as_json:
            click.echo(str(written))
    if as_json:
        click.echo(json.dumps({"ok": len(documents), "failed": failed, "results": documents}, indent=2,
                              ensure_ascii=False))
    sys.exit(1 if failed else 0)


@main.command()
@help_sections(Output=("include_all", "as_json"))
@model_options
@preprocess_options
@click.option("--all", "include_all", is_flag=True, help="List every named module, not only the feature stack.")
@click.option("--json", "as_json", is_flag=True, help="A JSON document on stdout.")
@reports_errors
def layers(model: str, model_kwargs: dict[str, Any] | None, weights: str, weights_file: Path | None,
           trust_pickle: bool, seed: int, device: str, resize: int | None, crop: int | None, no_crop: bool,
           include_all: bool, as_json: bool) -> None:
    """List the layers --layer can name: index, module path, type and output shape.

    Shapes are for the model's input size (its weights' crop, else 224). Pretrained weights are
    not downloaded for this: only a state-dict file is loaded, to check that it fits.
    """
    import torch

    from featviz.capture.gates import find_gates, gate_kinds, probe_input
    from featviz.capture.hooks import describe_layers
    from featviz.errors import LayerError
    from featviz.models.build import load_model

    loaded = load_model(model, weights, seed=seed, device=device, pretrained=False, weights_file=weights_file,
                        trust_pickle=trust_pickle, model_kwargs=model_kwargs)
    show_notes(loaded)
    preprocess = loaded.preprocess.with_overrides(resize, crop, no_crop)
    side = preprocess.crop or preprocess.resize or 224
    example = torch.zeros(1, 3, side, side, device=loaded.device)
    rows = describe_layers(loaded.module, example, include_all=include_all)
    if rows and all(row["output_shape"] is None for row in rows):
        raise UsageError(f"{loaded.name} does not run on a 3x{side}x{side} input: no layer produced an output",
                         hint="pass --crop (and --resize) with the input size the model takes")
    try:
        kinds = gate_kinds(find_gates(loaded.module, probe_input(loaded.module, side, side)))
    except LayerError:  # the listing still stands; --channel/--spatial learned will say what failed
        kinds = {}
    se_blocks = [path for path, found in kinds.items() if "channel" in found]
    for row in rows:
        row["se_block"] = row["path"] in se_blocks
        row["attention"] = kinds.get(row["path"], [])
    if as_json:
        click.echo(json.dumps({"model": loaded.name, "input_size": [side, side], "layers": rows,
                               "se_blocks": se_blocks, "attention_modules": kinds}, indent=2))
        return
    click.echo(f"{loaded.name}: input 3x{side}x{side}")
    width = max([len(r["path"]) for r in rows] + [4])
    type_width = max([len(r["type"]) for r in rows] + [4])
    click.echo(f"{'index':>5}  {'path':<{width}}  {'type':<{type_width}}  output shape")
    for row in rows:
        index = "" if row["index"] is None else str(row["index"])
        shape = "x".join(map(str, row["output_shape"])) if row["output_shape"] else "-"
        if row.get("layout") in ("tokens", "channels_last"):  # drawn as C x H x W: say so, and how
            facts = row.get("tokens")
            how = (f"tokens: {facts['prefix']} prefix + {facts['grid'][0]}x{facts['grid'][1]} patches" if facts
                   else "channels-last")
            shape += f" -> {'x'.join(map(str, row['map_shape']))} ({how})"
        elif row.get("layout_error"):
            shape += "  (layout unknown: not drawn)"
        mark = "".join(f"  [{kind} attention]" for kind in row["attention"] if kind != "channel")
        mark += "  [SE block]" if "channel" in row["attention"] else ""  # a learned channel gate
        click.echo(f"{index:>5}  {row['path']:<{width}}  {row['type']:<{type_width}}  {shape}{mark}")
    if kinds and not include_all:
        first = next(iter(kinds))
        click.echo(f"{len(se_blocks)} squeeze-and-excitation blocks (learned channel gates) among {len(kinds)} "
                   f"learned attention modules, e.g. {first} ({', '.join(kinds[first])}): `--all` lists them; show "
                   "their gates with --layer PATH --channel learned or --spatial learned")


main.add_command(atlas)
main.add_command(optimize)
main.add_command(spectrum)


if __name__ == "__main__":  # pragma: no cover
    main()
