"""``featviz sweep``: one photo's attention at every stage of a network, side by side.

A command of the ``featviz`` group (:mod:`featviz.cli.main` registers it); like every command it
only parses, calls the library (:func:`featviz.output.pipeline.sweep_visualizer`) and prints.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from featviz.cli.common import (
    EXIT_CODES,
    SectionedCommand,
    cam_methods,
    cam_options,
    help_sections,
    model_options,
    preprocess_options,
    reports_errors,
    show_notes,
    transformer_options,
)
from featviz.cli.tokenoptions import token_options
from featviz.errors import UsageError


@click.command(cls=SectionedCommand, epilog=EXIT_CODES)
@help_sections(Layer=("layers",), Attention=("spatial",), Drawing=("heat_cmap", "alpha"), Output=("out", "as_json"))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@model_options
@preprocess_options
@click.option("--layer", "-l", "layers", multiple=True,
              help="Stages to show (indices or module paths, PATH@K for a module's K-th call; comma-separated) "
                   "[default: after each ReLU/pool of "
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
@token_options
@reports_errors
def sweep(images: tuple[Path, ...], model: str, model_kwargs: dict[str, Any] | None, weights: str,
          weights_file: Path | None, trust_pickle: bool, seed: int, device: str, resize: int | None,
          crop: int | None, no_crop: bool, layers: tuple[str, ...], spatial: str | None, heat_cmap: str,
          alpha: float, out: Path, as_json: bool, cam: str | None, target: tuple[str, ...], cam_batch: int,
          heads: bool, heads_threshold: float | None, heads_upsample: str, rollout_fusion: str, rollout_discard: float,
          rollout_start: int, vit_stats: bool, artifacts: float | None, pca_tokens: bool,
          pca_foreground: float | None) -> None:
    """How a network's attention changes with depth: OUT/<image stem>/sweep.png shows the
    spatial-attention overlay at each stage side by side, with the stage's name and activation
    shape, all captured in one forward pass per image. With --cam, each stage shows the class
    activation map of the first method and target instead; with --heads (a vision transformer's
    blocks), the mean of the heads' attention. --vit-stats and --artifacts write the same files as
    show into OUT/<image stem>/ (and --vit-stats the run's mean into OUT/), --pca-tokens each
    stage's pca.png into OUT/<image stem>/<stage>/ (one basis per stage over all IMAGES)."""
    from featviz.errors import ImageError, OutputError
    from featviz.output.layout import check_output_folder, is_fatal_write_error, stem_keys
    from featviz.output.pipeline import RenderOptions, sweep_visualizer
    from featviz.output.sweepfiles import sweep_files, write_sweep
    from featviz.output.vitrun import write_run_average

    # Building the visualizer resolves and checks the layers: usage errors come before any image.
    visualizer = sweep_visualizer(model, weights, layers, seed=seed, device=device, resize=resize, crop=crop,
                                  no_crop=no_crop,
                                  options=RenderOptions(spatial=spatial, heat_cmap=heat_cmap, alpha=alpha,
                                                        cam=cam_methods(cam), target=target, cam_batch=cam_batch,
                                                        heads=heads, heads_threshold=heads_threshold,
                                                        heads_upsample=heads_upsample, rollout_fusion=rollout_fusion,
                                                        rollout_discard=rollout_discard, rollout_start=rollout_start,
                                                        vit_stats=vit_stats, artifacts=artifacts, pca_tokens=pca_tokens,
                                                        pca_foreground=pca_foreground),
                                  weights_file=weights_file, trust_pickle=trust_pickle,
                                  model_kwargs=model_kwargs)
    show_notes(visualizer.loaded)
    check_output_folder(out)
    if pca_tokens:  # one basis per stage over every photo of the run, before the first is drawn (as export)
        visualizer.fit_token_pca(images)
    documents, failed, done = [], 0, []
    for path, key in zip(images, stem_keys(images), strict=True):
        try:
            picture, results = visualizer.sweep(path)
            files = sweep_files(out, key, picture, results, visualizer.options.png_level)  # a planted link fails
        except (ImageError, UsageError) as error:
            click.echo(f"error: {error}", err=True)
            failed += 1
            continue
        try:
            written = write_sweep(files)
        except OSError as exc:
            if is_fatal_write_error(exc):
                raise OutputError(f"cannot write into {out / key} ({exc.strerror}); the run stopped",
                                  hint="free space or fix the output folder, then run sweep again") from None
            click.echo(f"error: {out / key}: {exc}", err=True)
            failed += 1
            continue
        done.append(out / key)
        documents.append({"input": str(path), "output": str(written[0]), "files": [str(w) for w in written],
                          "stages": [{"layer": r.layer.path, "shape": list(r.activations.shape)} for r in results]})
        if not as_json:
            for file in written:
                click.echo(str(file))
    statistics = None
    if vit_stats:  # the run's mean over the photos swept now (sweep writes no manifest)
        try:
            averaged = write_run_average(out, visualizer.loaded.name, visualizer.loaded.weights,
                                         visualizer.options.png_level, folders=done)
        except OSError as exc:
            raise OutputError(f"cannot write the run's attention statistics into {out} ({exc.strerror})",
                              hint="free space or fix the output folder, then run sweep again") from None
        statistics = averaged[0] if averaged else None
        if statistics is not None and not as_json:
            click.echo(str(statistics))
    if as_json:
        click.echo(json.dumps({"ok": len(documents), "failed": failed, "results": documents,
                               **({"attention_statistics": str(statistics)} if statistics else {})},
                              indent=2, ensure_ascii=False))
    sys.exit(1 if failed else 0)
