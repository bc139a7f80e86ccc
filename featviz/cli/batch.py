"""What ``featviz show`` and ``featviz export`` share: build the Visualizer from their options and
run the batch engine with a progress bar, errors on stderr and records on stdout.

Both commands (:mod:`featviz.cli.main`) differ only in what they print around one batch run; the
run itself, with its SIGTERM handling and a stdout that a closed pipe cannot stop, lives here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from featviz.cli.common import (
    cam_methods,
    progress_enabled,
    show_default_layer,
    show_notes,
)


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
        vit_stats=params.get("vit_stats", False), artifacts=params.get("artifacts"),
        pca_tokens=params.get("pca_tokens", False), pca_foreground=params.get("pca_foreground"),
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
         skip_existing: bool = False, collect: bool = False, scored: list[dict[str, Any]] | None = None,
         pca_photos: list[Any] | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """Shared by show and export: build the model, run the batch, report bad images on stderr.
    ``scored`` (--cam-score) collects each ok line's methods and AUCs for the closing table;
    ``pca_photos`` (--pca-tokens): the photos its basis is fitted over (export: all found, every shard)."""
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
                            on_image_done=progress.update, stop=stop, pca_photos=pca_photos)
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
