"""``featviz atlas``: what every channel of a layer responds to across a collection of images.

A command of the ``featviz`` group (:mod:`featviz.cli.main` registers it); like every command it only
parses, calls the library (:mod:`featviz.atlas.export`) and prints.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from featviz.cli.common import (
    EXIT_CODES,
    SectionedCommand,
    help_sections,
    model_options,
    parse_shard,
    preprocess_options,
    progress_enabled,
    report_found,
    reports_errors,
)
from featviz.cli.heap import keep_freed_memory
from featviz.errors import UsageError


@click.command(cls=SectionedCommand,
               epilog=EXIT_CODES.replace("rerun export with --skip-existing", "rerun atlas with --resume"))
@help_sections(Layer=("layers",), Output=("out",),
               Atlas=("top", "by", "optimize", "optimize_channels", "optimize_steps", "optimize_size", "optimize_lr",
                      "optimize_transforms"),
               Run=("batch_size", "workers", "recursive", "shard", "merge", "resume", "checkpoint_every", "quiet",
                    "progress"))
@click.argument("inputs", nargs=-1)
@model_options
@preprocess_options
@click.option("--layer", "-l", "layers", multiple=True, default=("0",), show_default=True,
              help="Feature-stack index, dotted module path or all; PATH@K: the K-th call of a module that "
                   "runs more than once; repeatable and comma-separated.")
@click.option("--out", "-o", "out", default="featviz-atlas", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--top", default=9, show_default=True, type=click.IntRange(1, 1000), help="Images kept per channel.")
@click.option("--by", type=click.Choice(["max", "mean"]), default="max", show_default=True,
              help="Rank images by the channel's maximum or its spatial mean.")
@click.option("--batch-size", default=None, type=click.IntRange(1, 4096),
              help="Photos per forward pass [default: 1 on the CPU, 8 on a GPU].")
@click.option("--workers", default=None, type=click.IntRange(1, 512),
              help="Decoding threads [default: number of cores].")
@click.option("--recursive", "-r", is_flag=True, help="Descend into sub-folders.")
@click.option("--shard", default=None, metavar="I/N",
              help="Fold only the I-th of N deterministic slices and write its partial state (merge with --merge).")
@click.option("--merge", is_flag=True, help="INPUTS are shard folders (written with --shard): combine their states "
                                             "into OUT; model, layers and options come from the shards.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run whose state is in OUT.")
@click.option("--checkpoint-every", default=30.0, show_default=True, type=click.FloatRange(0),
              help="Seconds between checkpoints of the partial state (what --resume continues from).")
@click.option("--optimize", is_flag=True,
              help="Then synthesise each channel's optimised image (as `featviz optimize`) and show it beside the "
                   "top patches, with r = activation(optimised) / activation(best photo). Not with --shard.")
@click.option("--optimize-channels", default=None, metavar="CHANNELS",
              help="With --optimize: channels like 0-63,100 of every layer [default: all].")
@click.option("--optimize-steps", default=256, show_default=True, type=int, help="With --optimize: Adam steps.")
@click.option("--optimize-size", default=None, type=int,
              help="With --optimize: image side [default: the atlas's --crop, else the model's input size].")
@click.option("--optimize-lr", default=0.05, show_default=True, type=float,
              help="With --optimize: Adam's learning rate.")
@click.option("--optimize-transforms", type=click.Choice(["auto", "standard", "jitter", "none"]), default="auto",
              show_default=True,
              help="With --optimize: as `featviz optimize --transforms` (auto: jitter below 128 px).")
@click.option("--quiet", "-q", is_flag=True, help="No progress.")
@click.option("--progress", is_flag=True, help="Show progress even when stderr is not a terminal.")
@reports_errors
def atlas(inputs: tuple[str, ...], recursive: bool, shard: str | None, merge: bool, resume: bool,
          checkpoint_every: float, **params: Any) -> None:
    """What every channel of a layer responds to across a collection of images: per channel the
    --top N images with the highest activation, with the receptive field of the maximal unit.

    Writes OUT/<layer>/atlas.json, channels/NNNN.png (each channel's top patches), atlas.png
    (one patch per channel) and the page OUT/index.html. INPUTS: files, folders, quoted globs, or -
    for paths on stdin; with --merge, the shard folders. With --optimize also OUT/<layer>/optimized/
    (as `featviz optimize --atlas OUT`), after the atlas is written.
    """
    from tqdm import tqdm

    from featviz.atlas.export import (
        AtlasRun,
        atlas_settings,
        merge_folders,
        write_atlas,
        write_state,
    )
    from featviz.atlas.optimized import add_to_atlas, check_optimize_options
    from featviz.cli.progress import progress_bar
    from featviz.cli.signals import exit_code, stop_on_signals
    from featviz.inputs.discover import find_images
    from featviz.output.export import shard as take_shard
    from featviz.output.pipeline import Visualizer

    out: Path = params["out"]
    if merge and (shard or resume):
        raise click.UsageError("--merge combines finished shards: no --shard or --resume")
    if not inputs:
        raise click.UsageError("give INPUTS (with --merge: the shard folders)")
    if params["optimize"] and shard:
        raise UsageError("--optimize needs the whole atlas, and a shard holds only a slice of the photos",
                         hint="leave --optimize out here and add it to the --merge command that combines the shards")
    if params["optimize"]:  # what needs no model, before the merged state is written
        check_optimize_options(params["optimize_channels"], **_optimize_settings(params))
        keep_freed_memory()  # before the model's first allocation

    picture_errors: list[str] = []

    def on_error(message: str) -> None:  # a kept photo that cannot be read again for the pictures
        picture_errors.append(message)
        click.echo(f"error: {message}", err=True)

    if merge:
        state = merge_folders([Path(folder) for folder in inputs])
        write_state(out, state)  # the merged folder has its state too, as the manual lists
        settings = state.settings
        visualizer = Visualizer(settings["model_option"], settings["weights_option"], settings["layers"],
                                seed=settings["seed"], device=params["device"], resize=settings["resize"],
                                crop=settings["crop"], no_crop=settings["crop"] is None,
                                model_kwargs=settings.get("model_kwargs"), weights_file=settings.get("weights_file"),
                                # never from a file: a pickle runs code, so only this command's flag allows it
                                trust_pickle=params["trust_pickle"])
        _check_same_weights(visualizer, settings)
        optimizations = _prepare_optimize(visualizer, params, settings["seed"])
        missing: list[str] = []
    else:
        shard_index = parse_shard(shard)
        visualizer = Visualizer(params["model"], params["weights"], params["layers"], seed=params["seed"],
                                device=params["device"], resize=params["resize"], crop=params["crop"],
                                no_crop=params["no_crop"], model_kwargs=params["model_kwargs"],
                                weights_file=params["weights_file"], trust_pickle=params["trust_pickle"])
        optimizations = _prepare_optimize(visualizer, params, params["seed"])  # checked before any photo is read
        found = find_images(list(inputs), recursive=recursive, stdin=sys.stdin if "-" in inputs else None, out=out)
        missing = found.missing
        report_found(found, params["quiet"])
        images = take_shard(found.images, *shard_index) if shard_index else found.images
        settings = atlas_settings(visualizer, top=params["top"], by=params["by"], images=found.images,
                                  model=params["model"], weights=params["weights"], seed=params["seed"],
                                  model_kwargs=params["model_kwargs"], weights_file=params["weights_file"],
                                  trust_pickle=params["trust_pickle"])
        progress = progress_bar(len(images), progress_enabled(params))
        with stop_on_signals() as stop:
            run = AtlasRun(visualizer, out, batch_size=params["batch_size"], workers=params["workers"],
                           checkpoint_seconds=checkpoint_every,
                           on_error=lambda message: progress.write(f"error: {message}", file=sys.stderr),
                           on_image_done=progress.update, stop=stop)
            state = run.start(settings, shard_index or (1, 1), resume)
            try:
                state = run.collect(state, images)
            except KeyboardInterrupt:  # a second Ctrl-C: no state written since the last checkpoint
                click.echo(f"\ninterrupted: rerun the same command with --resume to continue from the last "
                           f"checkpoint in {out / 'atlas-state.json'}", err=True)
                sys.exit(130)
            finally:
                progress.close()
        if run.stopped:
            click.echo(f"stopped by {stop.name}: {state.done} of {len(images)} inputs folded, state saved in "
                       f"{out / 'atlas-state.json'}; rerun the same command with --resume to continue", err=True)
            sys.exit(exit_code(stop))
        if shard_index:
            if not params["quiet"]:
                click.echo(f"shard {shard}: {state.done - state.failed} images folded, "
                           f"{state.failed + len(missing)} failed -> "
                           f"{out / 'atlas-state.json'}; combine the shards with --merge", err=True)
            sys.exit(1 if state.failed or missing else 0)
    written = write_atlas(state, visualizer, out, workers=params["workers"], on_error=on_error)
    for prepared in optimizations:
        bar = tqdm(total=prepared.settings.steps, desc=f"optimize {prepared.layer.path}", unit="step",
                   file=sys.stderr, disable=not progress_enabled(params))
        try:
            written.extend(add_to_atlas(out, prepared, _step_counter(bar)))
        finally:
            bar.close()
    if not params["quiet"]:
        images_done = next(iter(state.tables.values())).images if state.tables else 0
        failed = state.failed + len(missing)
        unread = f", {len(picture_errors)} kept photo(s) unreadable for the pictures" if picture_errors else ""
        click.echo(f"atlas of {images_done} images ({failed} failed{unread}): {len(written)} files -> {out}", err=True)
    # every `error:` line printed is counted above and makes the exit code 1
    sys.exit(1 if state.failed or missing or picture_errors else 0)


def _step_counter(bar: Any) -> Callable[[int, float], None]:
    """The optimisation's on_step: one tick of ``bar`` per step."""

    def on_step(step: int, value: float) -> None:
        bar.update(1)

    return on_step


def _prepare_optimize(visualizer: Any, params: dict[str, Any], seed: int) -> list[Any]:
    """With --optimize, one checked optimisation per layer (the library raises on bad options)."""
    from featviz.atlas.optimized import prepare_atlas_layers

    if not params["optimize"]:
        return []
    return prepare_atlas_layers(visualizer.loaded, visualizer.layers, params["optimize_channels"],
                                crop=visualizer.preprocess.crop, seed=seed, **_optimize_settings(params))


def _optimize_settings(params: dict[str, Any]) -> dict[str, Any]:
    """The --optimize-* options as the engine's settings."""
    choice = params["optimize_transforms"]
    return {"size": params["optimize_size"], "steps": params["optimize_steps"], "lr": params["optimize_lr"],
            "transforms": choice != "none", "jitter_only": None if choice == "auto" else choice == "jitter"}


def _check_same_weights(visualizer: Any, settings: dict[str, Any]) -> None:
    """--merge builds the model again from the shards' options: its weights must be theirs."""
    from featviz.atlas.export import weights_digest

    if weights_digest(visualizer.loaded.module) != settings["weights_digest"]:
        raise UsageError(f"the weights loaded now for {settings['model_option']} ({settings['weights_option']}) "
                         "differ from the ones the shards were made with",
                         hint="merge where the same model and weights files are available")
