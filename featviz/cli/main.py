"""The ``featviz`` command: parse options, call the library, print. No computation here.

This module holds the group and show and export; the batch run those two share lives in
:mod:`featviz.cli.batch`, ``sweep`` in :mod:`featviz.cli.sweep`, ``layers`` in
:mod:`featviz.cli.layers`, ``atlas`` in :mod:`featviz.cli.atlas`, ``optimize`` in
:mod:`featviz.cli.optimize`, and what the commands share (error display, option bundles) in
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
import os
import sys
from pathlib import Path
from typing import Any

import click

from featviz import __version__
from featviz.cli.atlas import atlas
from featviz.cli.batch import _run
from featviz.cli.common import (
    EXIT_CODES,
    FeatvizGroup,
    cam_options,
    cam_score_options,
    help_sections,
    model_options,
    parse_shard,
    preprocess_options,
    render_options,
    report_found,
    reports_errors,
    run_options,
    transformer_options,
)
from featviz.cli.layers import layers
from featviz.cli.optimize import optimize
from featviz.cli.spectrum import spectrum
from featviz.cli.sweep import sweep
from featviz.cli.tokenoptions import token_options


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
@token_options
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
        statistics = _run_statistics(params)
        if statistics:  # --vit-stats: the run's mean, before the report (which comes last)
            click.echo(str(statistics))
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


def _run_statistics(params: dict[str, Any]) -> Path | None:
    """--vit-stats: OUT/attention_statistics.json, the run's mean, where the run wrote it."""
    from featviz.output.vitfiles import STATISTICS_JSON

    path = params["out"] / STATISTICS_JSON
    return path if params.get("vit_stats") and path.is_file() else None


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
    # the photo-level files of --vit-stats/--artifacts are listed as ../NAME: printed without the ..
    return [os.path.normpath(folder / name) for name in [*summary["files"], "summary.json"]]


@main.command(epilog=EXIT_CODES)
@help_sections(Run=("recursive", "skip_existing", "shard"))
@click.argument("inputs", nargs=-1, required=True)
@model_options
@preprocess_options
@render_options
@cam_options
@transformer_options
@token_options
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
                     skip_existing=skip_existing, scored=scored, pca_photos=found.images)  # every shard: one basis
    if not params["quiet"]:
        page = _report_page(params["out"])
        statistics = _run_statistics(params)
        where = (f"; attention statistics: {statistics}" if statistics else "") + (f"; report: {page}" if page else "")
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


main.add_command(sweep)
main.add_command(layers)
main.add_command(atlas)
main.add_command(optimize)
main.add_command(spectrum)


if __name__ == "__main__":  # pragma: no cover
    main()
