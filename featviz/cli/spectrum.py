"""``featviz spectrum``: the mean magnitude spectrum of a folder of photos, for
``featviz optimize --param maco --spectrum FILE``. Parses, calls
:func:`featviz.optimize.spectrum.compute_spectrum`, prints; computes nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from featviz.cli.common import EXIT_CODES, progress_enabled, report_found, reports_errors
from featviz.errors import FeatvizError, UsageError


@click.command(epilog=EXIT_CODES)
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", "-o", "out", default="spectrum.npz", show_default=True,
              type=click.Path(path_type=Path), help="The spectrum file to write (.npz).")
@click.option("--size", default=224, show_default=True, type=int,
              help="Photos are resized (shorter side) and centre-cropped to SIZE x SIZE; use the --size you "
                   "will optimise at (another size is resampled).")
@click.option("--recursive", "-r", is_flag=True, help="Descend into sub-folders.")
@click.option("--precision", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="float16 halves the file.")
@click.option("--quiet", "-q", is_flag=True, help="No progress, no summary.")
@click.option("--progress", is_flag=True, help="Show progress even when stderr is not a terminal.")
@reports_errors
def spectrum(inputs: tuple[str, ...], out: Path, size: int, recursive: bool, precision: str, quiet: bool,
             progress: bool) -> None:
    """The mean magnitude spectrum (per colour channel, of the photos at SIZE px in [0, 1]) of
    INPUTS (files, folders, quoted globs, or - for paths on stdin), for
    `featviz optimize --param maco --spectrum OUT` (MACO, Fel et al. 2023)."""
    from tqdm import tqdm

    from featviz.inputs.discover import find_images
    from featviz.optimize.spectrum import check_size, compute_spectrum, save_spectrum

    check_size(size)
    if out.is_dir():
        raise UsageError(f"--out {out}: is a folder", hint="give a file name, e.g. --out spectrum.npz")
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UsageError(f"--out {out}: {parent} is a file, not a folder", hint="choose another --out")
    found = find_images(list(inputs), recursive=recursive, stdin=sys.stdin if "-" in inputs else None)
    report_found(found, quiet)
    if not found.images:
        raise UsageError(f"no image found in {', '.join(inputs)}", hint="give folders or files of photos"
                         + ("" if recursive else "; --recursive descends into sub-folders"))
    bar = tqdm(total=len(found.images), desc="spectrum", unit="photo", file=sys.stderr,
               disable=not progress_enabled({"quiet": quiet, "progress": progress}))
    try:
        run = compute_spectrum(found.images, size, on_photo=lambda: bar.update(1))
    finally:
        bar.close()
    for failure in run.failures:
        click.echo(f"error: {failure}", err=True)
    if run.spectrum is None:
        raise FeatvizError(f"none of the {len(found.images)} photos could be read: no spectrum written",
                           hint="see the error lines above")
    save_spectrum(run.spectrum, out, precision)
    failed = len(run.failures) + len(found.missing)
    if not quiet:
        click.echo(f"spectrum of {run.spectrum.count} photos at {size} px, {failed} failed -> {out}", err=True)
    sys.exit(1 if failed else 0)
