"""``featviz optimize``: the picture each channel wants to see. Parses, calls
:func:`featviz.optimize.api.optimize_layer`, shows a progress bar and prints; computes nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from featviz.cli.common import EXIT_CODES, progress_enabled, reports_errors
from featviz.cli.heap import keep_freed_memory


@click.command(epilog=EXIT_CODES)
@click.option("--model", "-m", default="alexnet", show_default=True,
              help="torchvision name, timm:NAME, or package.module:factory (or path/to/file.py:factory).")
@click.option("--weights", "-w", default="DEFAULT", show_default=True, help="As for `featviz show`.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seeds --weights none AND every random draw of the optimisation (same seed, same pixels).")
@click.option("--device", default="cpu", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--layer", "-l", default=None,
              help="Feature-stack index or dotted module path, PATH@K for a module's K-th call (not for "
                   "--objective class).")
@click.option("--channels", default="0-15", show_default=True, help="Channels like 0-63,100.")
@click.option("--objective", type=click.Choice(["channel", "neuron", "class"]), default="channel", show_default=True,
              help="channel: the channel's mean; neuron: its centre unit; class: a logit (--target).")
@click.option("--target", default=None, help="With --objective class: class indices or names, comma-separated.")
@click.option("--negative", is_flag=True, help="Minimise instead: what suppresses the channel.")
@click.option("--diversity", default=1, show_default=True, type=int,
              help="K different images per channel (Lucid's Gram diversity).")
@click.option("--param", type=click.Choice(["fft", "pixel", "maco"]), default="fft", show_default=True,
              help="fft: Lucid's 1/f spectrum in decorrelated colour; pixel: plain pixels under a sigmoid; "
                   "maco: only the phase, under a fixed natural-image magnitude spectrum (Fel et al. 2023).")
@click.option("--spectrum", default=None,
              help="With --param maco: a spectrum file made by `featviz spectrum FOLDER --out FILE` "
                   "[default: the built-in one, from featviz's five sample photos].")
@click.option("--transforms", "transform_set", type=click.Choice(["auto", "standard", "jitter", "none"]),
              default="auto", show_default=True,
              help="Transformation robustness: standard is Lucid's (pad 12, jitter, scale, rotate; sized for ~224 px); "
                   "jitter only jitters by up to 4 px (better for small images); auto: jitter below 128 px, "
                   "standard from 128 px on; none: off.")
@click.option("--steps", default=512, show_default=True, type=int, help="Adam steps.")
@click.option("--lr", default=None, type=float,
              help="Adam's learning rate [default: 0.05; 1.0 with --param maco, as MACO's official code].")
@click.option("--size", default=None, type=int, help="Image side [default: the model's input size].")
@click.option("--out", "-o", "out", default="featviz-optimize", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--atlas", "atlas_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Add the images to this atlas (written by `featviz atlas` with the same model and weights): "
                   "each beside the channel's top patches with r = activation(optimised) / activation(best photo).")
@click.option("--interpolate", default=None, metavar="A,B",
              help="Instead of one image per channel: a row of --frames images from channel A to channel B "
                   "(image i maximises (1-t) mean A + t mean B, t = i/(frames-1)); writes "
                   "OUT/<layer>/interpolation/AAAA-BBBB.png and .json.")
@click.option("--frames", default=5, show_default=True, type=int, help="With --interpolate: images in the row.")
@click.option("--quiet", "-q", is_flag=True, help="No progress.")
@click.option("--progress", is_flag=True, help="Show progress even when stderr is not a terminal.")
@reports_errors
def optimize(**params: Any) -> None:
    """Synthesise for each channel the image that maximises its mean activation (Olah et al.,
    Distill 2017). Writes OUT/<layer>/optimized/NNNN.png, optimized/grid.png and optimize.json."""
    from tqdm import tqdm

    from featviz.atlas.optimized import add_to_atlas, check_atlas
    from featviz.optimize.api import extra_settings, layer_name, prepare, run_prepared
    from featviz.optimize.export import write_optimized

    keep_freed_memory()  # before the model's first allocation
    if params["interpolate"] is not None:
        _interpolate(params)
        return
    class_objective = params["objective"] == "class"
    units = params["target"] if class_objective else params["channels"]
    if class_objective and not units:
        raise click.UsageError("--objective class needs --target")
    prepared = prepare(params["model"], params["weights"], None if class_objective else (params["layer"] or "0"),
                       units, seed=params["seed"], device=params["device"], objective=params["objective"],
                       steps=params["steps"], lr=params["lr"], size=params["size"], negative=params["negative"],
                       diversity=params["diversity"], param=params["param"], spectrum=params["spectrum"],
                       **_transforms(params))
    if params["atlas_dir"] is not None:
        check_atlas(params["atlas_dir"], prepared)
    bar = tqdm(total=max(0, params["steps"]), desc="optimize", unit="step", file=sys.stderr,
               disable=not progress_enabled(params))

    def on_step(step: int, value: float) -> None:
        bar.update(1)
        bar.set_postfix(objective=f"{value:.4g}", refresh=False)

    try:
        if params["atlas_dir"] is not None:
            files = add_to_atlas(params["atlas_dir"], prepared, on_step)
            activation = json.loads((files[-2]).read_text(encoding="utf-8"))["images"]
            reached = [entry["activation"] for entry in activation]
        else:
            result = run_prepared(prepared, on_step)
            files = write_optimized(params["out"], layer_name(prepared), result, prepared.settings,
                                    extra_settings(prepared))
            reached = result.activation
    finally:
        bar.close()
    if not params["quiet"]:
        mean = sum(reached) / max(1, len(reached))
        click.echo(f"{len(reached)} images, mean activation reached {mean:.4g}: {len(files)} files -> "
                   f"{params['atlas_dir'] or params['out']}", err=True)


def _interpolate(params: dict[str, Any]) -> None:
    """``--interpolate A,B``: the row of frames between two channels."""
    from tqdm import tqdm

    from featviz.optimize.api import prepare_interpolation, run_interpolation

    if params["atlas_dir"] is not None:
        raise click.UsageError("--interpolate writes a row of its own: it does not go into an --atlas")
    prepared = prepare_interpolation(params["model"], params["weights"], params["layer"] or "0", params["interpolate"],
                                     params["frames"], seed=params["seed"], device=params["device"],
                                     objective=params["objective"], steps=params["steps"], lr=params["lr"],
                                     size=params["size"], negative=params["negative"], diversity=params["diversity"],
                                     param=params["param"], spectrum=params["spectrum"], **_transforms(params))
    bar = tqdm(total=params["steps"], desc="interpolate", unit="step", file=sys.stderr,
               disable=not progress_enabled(params))
    try:
        result, files = run_interpolation(prepared, params["frames"], params["out"],
                                          lambda step, value: bar.update(1))
    finally:
        bar.close()
    if not params["quiet"]:
        click.echo(f"{len(result.units)} frames from channel {prepared.units[0]} to {prepared.units[1]}: "
                   f"{files[0]}", err=True)


def _transforms(params: dict[str, Any]) -> dict[str, bool | None]:
    """--transforms as the engine's two settings (auto: ``jitter_only`` None, the size decides)."""
    choice = params["transform_set"]
    return {"transforms": choice != "none", "jitter_only": None if choice == "auto" else choice == "jitter"}
