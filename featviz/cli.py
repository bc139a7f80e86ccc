"""The ``featviz`` command: parse options, call the library, print. No computation here.

Heavy modules (torch, torchvision, matplotlib) are imported inside the commands, so
``featviz --help`` stays instant.

Exit codes: 0 everything done; 1 some images failed (the others were done); 2 usage error
(bad option, unknown model, weights that do not fit, layer out of range), reported before any
image is processed.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from featviz import __version__
from featviz.errors import FeatvizError, UsageError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES = """\b
Exit codes:
  0  everything was done
  1  some images failed (each is named on stderr; the others were done)
  2  usage error: bad option, unknown model or weights, layer out of range
  130 interrupted (Ctrl-C); rerun export with --skip-existing to resume
"""


class FeatvizClickError(click.ClickException):
    """A library error shown as one line, with its hint on a second line."""

    def __init__(self, error: FeatvizError) -> None:
        super().__init__(error.message)
        self.hint = error.hint
        self.exit_code = 2 if isinstance(error, UsageError) else 1

    def show(self, file: Any = None) -> None:
        stream = file or sys.stderr
        click.echo(f"Error: {self.message}", file=stream)
        if self.hint:
            click.echo(f"Hint: {self.hint}", file=stream)


def reports_errors(command: F) -> F:
    """Turn :class:`FeatvizError` into a clean message and exit code instead of a traceback;
    Ctrl-C ends with the shell's usual 130 (every file already written is whole)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FeatvizError as error:
            raise FeatvizClickError(error) from None
        except KeyboardInterrupt:
            click.echo("\ninterrupted: the files written so far are complete; rerun with --skip-existing "
                       "to resume", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


# --- option bundles -----------------------------------------------------------------------

def _compose(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


model_options = _compose(
    click.option("--model", "-m", default="alexnet", show_default=True,
                 help="torchvision classification model name, a TorchScript file, or package.module:factory."),
    click.option("--weights", "-w", default="DEFAULT", show_default=True,
                 help="DEFAULT, a torchvision weights name (IMAGENET1K_V1), none (random, seeded), or a state-dict file."),
    click.option("--seed", default=0, show_default=True, type=int, help="Seed for --weights none."),
    click.option("--device", default="cpu", show_default=True, help="auto, cpu, cuda, cuda:N or mps."),
)

preprocess_options = _compose(
    click.option("--resize", type=int, default=None, help="Resize the shorter side to this many pixels (default: the weights' own, else 256)."),
    click.option("--crop", type=int, default=None, help="Centre-crop to this square size (default: the weights' own, else 224)."),
    click.option("--no-crop", is_flag=True, help="Do not crop: the network sees the whole resized photo."),
)

render_options = _compose(
    click.option("--layer", "-l", "layers", multiple=True, default=("0",), show_default=True,
                 help="Feature-stack index (negative from the end), dotted module path, or all; repeatable and comma-separated."),
    click.option("--size", default=256, show_default=True, type=int, help="Side of each channel tile in pixels."),
    click.option("--cmap", default="gray", show_default=True, help="Matplotlib colormap for the grid."),
    click.option("--heat-cmap", default="jet", show_default=True, help="Matplotlib colormap for the overlays."),
    click.option("--alpha", default=0.5, show_default=True, type=float, help="Opacity of the heat map over the photo."),
    click.option("--labels", is_flag=True, help="Write channel numbers on the grid tiles."),
    click.option("--channels", default=None, help="Channels to draw, like 0-15,32 (default: all)."),
    click.option("--top-k", type=int, default=None, help="Draw only the N channels with the largest channel-attention weight."),
    click.option("--max-channels", type=int, default=None, help="At most N tiles in the grid."),
    click.option("--sort-by", type=click.Choice(["index", "weight"]), default="index", show_default=True,
                 help="Order of the grid tiles."),
    click.option("--spatial", type=click.Choice(["mean", "max", "meanmax"]), default=None,
                 help="Spatial attention: mean over channels, max, or the average of both [default: mean; meanmax with --attention cbam]."),
    click.option("--channel", type=click.Choice(["se", "cbam", "dct", "learned"]), default="se", show_default=True,
                 help="Channel attention: SE squeeze (average pooling), CBAM (average + max pooling), FcaNet's DCT "
                      "frequencies, or the learned gate of a squeeze-and-excitation block."),
    click.option("--attention", type=click.Choice(["separate", "cbam"]), default="separate", show_default=True,
                 help="separate: both maps from the raw features; cbam: channel attention first, spatial attention "
                      "of the channel-refined features (CBAM's order)."),
    click.option("--dct-frequencies", default=None, metavar="U,V;U,V…",
                 help="With --channel dct: frequencies on FcaNet's 7x7 grid [default: the paper's top16]."),
    click.option("--stn", is_flag=True, help="Draw the sampling grid of the model's spatial transformer (its first affine_grid call) over the photo."),
    click.option("--normalize", type=click.Choice(["channel", "layer", "image"]), default="channel", show_default=True,
                 help="Grey scale of the tiles: each channel on its own, one for the whole layer, or one across all layers of the image."),
    click.option("--clip-percentile", type=float, default=None, metavar="P",
                 help="Clip tile values to the (100-P)th..Pth percentiles before scaling (e.g. 99.5), so hot pixels cannot wash a tile out."),
    click.option("--predict", is_flag=True, help="Also run the rest of the network and record the top-5 classes."),
    click.option("--save-raw", is_flag=True, help="Also write activations.npy and attention.npz."),
    click.option("--png-level", default=1, show_default=True, type=click.IntRange(0, 9),
                 help="PNG compression: 1-3 by ISA-L (fast), 0 none, 4-9 by zlib (files ~12% smaller, "
                      "export ~4x slower)."),
)

cam_options = _compose(
    click.option("--cam", "cam", default=None, metavar="METHOD[,METHOD…]",
                 help="Class activation maps: cam, gradcam, gradcam++, xgradcam, layercam, hirescam, scorecam, "
                      "ablationcam, eigencam (comma-separated); writes cam/<method>-<target>.png per layer."),
    click.option("--target", "target", multiple=True, default=("top",), show_default=True, metavar="T[,T…]",
                 help="Classes to explain: an index (281), a class name (tabby), top, or topN; comma-separated."),
    click.option("--cam-batch", default=32, show_default=True, type=click.IntRange(1, 65536),
                 help="Masked or ablated inputs per forward pass for scorecam and ablationcam."),
)


def _cam_methods(text: str | None) -> tuple[str, ...]:
    return tuple(p.strip().lower() for p in (text or "").split(",") if p.strip())


run_options = _compose(
    click.option("--out", "-o", "out", default="featviz-out", show_default=True,
                 type=click.Path(file_okay=False, path_type=Path), help="Output folder."),
    click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout."),
    click.option("--batch-size", default=None, type=click.IntRange(1, 4096),
                 help="Photos per forward pass [default: 1 on the CPU, where larger batches measured no faster "
                      "and cost memory; 8 on a GPU]."),
    click.option("--workers", default=None, type=click.IntRange(1, 512),
                 help="PNG-encoding threads [default: number of cores]."),
    click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
    click.option("--progress", is_flag=True, help="Show the progress bar even when stderr is not a terminal."),
)


def _build_visualizer(params: dict[str, Any]) -> Any:
    from featviz.attention import parse_frequencies
    from featviz.pipeline import RenderOptions, Visualizer, parse_channels

    options = RenderOptions(
        size=params["size"], cmap=params["cmap"], heat_cmap=params["heat_cmap"], alpha=params["alpha"],
        labels=params["labels"], channels=parse_channels(params["channels"]), top_k=params["top_k"],
        max_channels=params["max_channels"], sort_by=params["sort_by"], spatial=params["spatial"],
        channel=params["channel"], attention=params["attention"],
        dct_frequencies=parse_frequencies(params["dct_frequencies"]),
        stn=params["stn"], normalize=params["normalize"], clip_percentile=params["clip_percentile"],
        predict=params["predict"], save_raw=params["save_raw"], png_level=params["png_level"],
        cam=_cam_methods(params["cam"]), target=tuple(params["target"]), cam_batch=params["cam_batch"],
    )
    return Visualizer(params["model"], params["weights"], params["layers"], seed=params["seed"],
                      device=params["device"], resize=params["resize"], crop=params["crop"],
                      no_crop=params["no_crop"], options=options)


class _Progress:
    """Images done, images/s and time left, on stderr.

    On a terminal one line is redrawn in place (at most 10 times a second); elsewhere (forced
    with --progress, e.g. into a job scheduler's log) a full line is written every few seconds,
    so logs stay readable.
    """

    def __init__(self, total: int, enabled: bool, label: str) -> None:
        import time

        self.total, self.enabled, self.label = total, enabled and total > 0, label
        self.done = 0
        self.started = self.last = time.monotonic()
        self.interactive = sys.stderr.isatty()

    def advance(self) -> None:
        import time

        self.done += 1
        now = time.monotonic()
        pause = 0.1 if self.interactive else 5.0
        if self.enabled and (now - self.last >= pause or self.done == self.total):
            self.last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        text = (f"{self.label}: {self.done}/{self.total} images, {rate:.2f} images/s, "
                f"{left:.0f} s left")
        if self.interactive:
            click.echo("\r" + text.ljust(70), nl=False, err=True)
        else:
            click.echo(text, err=True)

    def close(self) -> None:
        if self.enabled and self.interactive:
            click.echo("", err=True)


def _progress_enabled(params: dict[str, Any]) -> bool:
    if params["quiet"]:
        return False
    return bool(params["progress"]) or sys.stderr.isatty()


def _run(images: list[Any], params: dict[str, Any], *, manifest: bool, stream_records: bool,
         skip_existing: bool = False, collect: bool = False) -> tuple[Any, list[dict[str, Any]]]:
    """Shared by show and export: build the model, run the batch, report bad images on stderr."""
    from featviz.export import Exporter

    visualizer = _build_visualizer(params)
    records: list[dict[str, Any]] = []
    progress = _Progress(len(images), _progress_enabled(params), "featviz")

    def on_record(record: dict[str, Any]) -> None:
        if record["status"] == "error":
            click.echo(f"error: {record['error']}", err=True)
        if stream_records:
            click.echo(json.dumps(record, ensure_ascii=False))
        elif collect:  # show lists what it wrote; export's record is the manifest (memory stays flat)
            records.append(record)

    exporter = Exporter(visualizer, params["out"], batch_size=params["batch_size"], workers=params["workers"],
                        skip_existing=skip_existing, manifest=manifest, on_record=on_record,
                        on_image_done=progress.advance)
    try:
        report = exporter.run(images)
    finally:
        progress.close()
    return report, records


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="featviz")
def main() -> None:
    """Show what a convolutional network sees: channel grids, per-channel maps and attention
    overlays for a layer of a torchvision (or your own) CNN."""


@main.command(epilog=EXIT_CODES)
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@model_options
@preprocess_options
@render_options
@cam_options
@run_options
@click.option("--open", "open_viewer", is_flag=True, help="Open the first grid in the system image viewer.")
@reports_errors
def show(images: tuple[Path, ...], open_viewer: bool, **params: Any) -> None:
    """Visualise LAYER activations of each IMAGE into OUT/<image stem>/<layer>/.

    Writes grid.png, channels/NNNN.png, spatial_attention.png, channel_attention.png and
    summary.json per image and layer, then prints the paths it wrote (--json: one JSON document).
    Like export, it also appends to OUT/manifest.jsonl and rewrites the report OUT/index.html.
    """
    from pathlib import PurePosixPath

    from featviz.inputs import InputImage
    from featviz.layout import stem_keys

    inputs = [InputImage(path=path, key=PurePosixPath(key)) for path, key in zip(images, stem_keys(images))]
    report, records = _run(inputs, params, manifest=True, stream_records=False, collect=True)
    for record in records:
        record["files"] = _written_files(params["out"], record)
    if params["as_json"]:
        click.echo(json.dumps({"ok": report.ok, "failed": report.failed, "results": records},
                              indent=2, ensure_ascii=False))
    else:
        for record in records:
            for file in record["files"]:
                click.echo(file)
        if params["predict"]:
            for line in _prediction_lines(params["out"], records):
                click.echo(line)
    if open_viewer:
        grids = [f for r in records for f in r["files"] if f.endswith("grid.png")]
        if grids:
            click.launch(grids[0])
    sys.exit(report.exit_code)


def _prediction_lines(out: Path, records: list[dict[str, Any]]) -> list[str]:
    """``prediction: <image>: label (p%), ...``, once per image."""
    lines, seen = [], set()
    for record in records:
        if record["status"] != "ok" or record["input"] in seen:
            continue
        seen.add(record["input"])
        summary = json.loads((out / record["output"] / "summary.json").read_text(encoding="utf-8"))
        top = ", ".join(f"{p['label']} ({100 * p['probability']:.1f}%)" for p in summary.get("predictions", []))
        lines.append(f"prediction: {record['input']}: {top}")
    return lines


def _written_files(out: Path, record: dict[str, Any]) -> list[str]:
    if record["status"] != "ok":
        return []
    folder = out / record["output"]
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    return [str(folder / name) for name in [*summary["files"], "summary.json"]]


@main.command(epilog=EXIT_CODES)
@click.argument("inputs", nargs=-1, required=True)
@model_options
@preprocess_options
@render_options
@cam_options
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
    from featviz.export import shard as take_shard
    from featviz.inputs import find_images

    shard_index = _parse_shard(shard)
    found = find_images(list(inputs), recursive=recursive, stdin=sys.stdin if "-" in inputs else None)
    for missing in found.missing:
        click.echo(f"error: {missing}: no such file, folder or matching glob", err=True)
    images = take_shard(found.images, *shard_index) if shard_index else found.images
    skipped = found.skipped_hidden + found.skipped_not_image
    if skipped and not params["quiet"]:
        click.echo(f"skipped {found.skipped_hidden} hidden and {found.skipped_not_image} non-image file(s)", err=True)
    report, _ = _run(images, params, manifest=True, stream_records=params["as_json"],
                     skip_existing=skip_existing)
    if not params["quiet"]:
        click.echo(f"{report.ok} done, {report.skipped} skipped, {report.failed} failed -> {params['out']}", err=True)
    sys.exit(1 if report.failed or found.missing else 0)


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    index, slash, count = text.partition("/")
    try:
        if not slash:
            raise ValueError
        parsed = int(index), int(count)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not I/N, e.g. 1/4", param_hint="--shard") from None
    if parsed[1] < 1 or not 1 <= parsed[0] <= parsed[1]:
        raise click.BadParameter(f"{text!r}: I must be between 1 and N", param_hint="--shard")
    return parsed


@main.command(epilog=EXIT_CODES)
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@model_options
@preprocess_options
@click.option("--layer", "-l", "layers", multiple=True,
              help="Stages to show (indices or module paths, comma-separated) [default: after each ReLU/pool of "
                   "`features`, else the convolution blocks, e.g. ResNet's conv1, layer1..layer4].")
@click.option("--spatial", type=click.Choice(["mean", "max", "meanmax"]), default=None, help="Spatial attention [default: mean].")
@click.option("--heat-cmap", default="jet", show_default=True, help="Matplotlib colormap for the overlays.")
@click.option("--alpha", default=0.5, show_default=True, type=float, help="Opacity of the heat map over the photo.")
@click.option("--out", "-o", "out", default="featviz-out", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--json", "as_json", is_flag=True, help="A JSON document on stdout.")
@cam_options
@reports_errors
def sweep(images: tuple[Path, ...], model: str, weights: str, seed: int, device: str, resize: int | None,
          crop: int | None, no_crop: bool, layers: tuple[str, ...], spatial: str | None, heat_cmap: str,
          alpha: float, out: Path, as_json: bool, cam: str | None, target: tuple[str, ...], cam_batch: int) -> None:
    """How a network's attention changes with depth: OUT/<image stem>/sweep.png shows the
    spatial-attention overlay at each stage side by side, with the stage's name and activation
    shape, all captured in one forward pass per image. With --cam, each stage shows the class
    activation map of the first method and target instead."""
    from featviz.errors import ImageError
    from featviz.layout import atomic_write, png_bytes, stem_keys
    from featviz.pipeline import RenderOptions, sweep_visualizer

    # Building the visualizer resolves and checks the layers: usage errors come before any image.
    visualizer = sweep_visualizer(model, weights, layers, seed=seed, device=device, resize=resize, crop=crop,
                                  no_crop=no_crop, options=RenderOptions(spatial=spatial, heat_cmap=heat_cmap, alpha=alpha,
                                                        cam=_cam_methods(cam), target=target, cam_batch=cam_batch))
    documents, failed = [], 0
    for path, key in zip(images, stem_keys(images)):
        try:
            picture, results = visualizer.sweep(path)
        except ImageError as error:
            click.echo(f"error: {error}", err=True)
            failed += 1
            continue
        target = out / key / "sweep.png"
        atomic_write(target, png_bytes(picture, 1))
        documents.append({"input": str(path), "output": str(target),
                          "stages": [{"layer": r.layer.path, "shape": list(r.activations.shape)} for r in results]})
        if not as_json:
            click.echo(str(target))
    if as_json:
        click.echo(json.dumps({"ok": len(documents), "failed": failed, "results": documents}, indent=2, ensure_ascii=False))
    sys.exit(1 if failed else 0)


@main.command()
@model_options
@preprocess_options
@click.option("--all", "include_all", is_flag=True, help="List every named module, not only the feature stack.")
@click.option("--json", "as_json", is_flag=True, help="A JSON document on stdout.")
@reports_errors
def layers(model: str, weights: str, seed: int, device: str, resize: int | None, crop: int | None,
           no_crop: bool, include_all: bool, as_json: bool) -> None:
    """List the layers --layer can name: index, module path, type and output shape.

    Shapes are for the model's input size (its weights' crop, else 224). Pretrained weights are
    not downloaded for this: only a state-dict file is loaded, to check that it fits.
    """
    import torch

    from featviz.capture import describe_layers
    from featviz.learned import find_se_blocks
    from featviz.models import load_model

    loaded = load_model(model, weights, seed=seed, device=device, pretrained=False)
    preprocess = loaded.preprocess.with_overrides(resize, crop, no_crop)
    side = preprocess.crop or preprocess.resize or 224
    example = torch.zeros(1, 3, side, side, device=loaded.device)
    rows = describe_layers(loaded.module, example, include_all=include_all)
    se_blocks = [b.path for b in find_se_blocks(loaded.module)]
    for row in rows:
        row["se_block"] = row["path"] in se_blocks
    if as_json:
        click.echo(json.dumps({"model": loaded.name, "input_size": [side, side], "layers": rows,
                               "se_blocks": se_blocks}, indent=2))
        return
    click.echo(f"{loaded.name}: input 3x{side}x{side}")
    width = max([len(r["path"]) for r in rows] + [4])
    type_width = max([len(r["type"]) for r in rows] + [4])
    click.echo(f"{'index':>5}  {'path':<{width}}  {'type':<{type_width}}  output shape")
    for row in rows:
        index = "" if row["index"] is None else str(row["index"])
        shape = "x".join(map(str, row["output_shape"])) if row["output_shape"] else "-"
        mark = "  [SE block]" if row["se_block"] else ""
        click.echo(f"{index:>5}  {row['path']:<{width}}  {row['type']:<{type_width}}  {shape}{mark}")
    if se_blocks and not include_all:
        click.echo(f"{len(se_blocks)} squeeze-and-excitation blocks, e.g. {se_blocks[0]}: `--all` lists them; "
                   "show their learned gates with --layer PATH --channel learned")


if __name__ == "__main__":  # pragma: no cover
    main()
