"""What every featviz command shares: the error display, the option bundles, and small parsers.

click is all this module imports at the top; the commands import the library when they run, so
``featviz --help`` stays instant. Library errors (:class:`~featviz.errors.FeatvizError`) become one
``Error:`` line and a ``Hint:`` line with the exit code of their class; click's own usage errors
are shown the same way.
"""

from __future__ import annotations

import functools
import json
import sys
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import click

from featviz.errors import FeatvizError, UsageError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES = """\b
Exit codes:
  0  everything was done
  1  some images failed (each is named on stderr; the others were done), or
     the output folder filled up: the run stopped; --skip-existing resumes
  2  usage error: bad option, unknown model or weights, layer out of range,
     an --out that cannot be written
  130 interrupted (Ctrl-C), 143 stopped by SIGTERM (scancel, a time limit):
     the photo in flight was finished; rerun export with --skip-existing
     to continue
"""


class FeatvizClickError(click.ClickException):
    """A library error shown as one line, with its hint on a second line. Exit code 1; a usage
    error is a :class:`FeatvizUsageClickError` (exit 2): click reads ``exit_code`` from the class.
    Make them with :meth:`of`."""

    def __init__(self, error: FeatvizError) -> None:
        super().__init__(error.message)
        self.hint = error.hint

    @staticmethod
    def of(error: FeatvizError) -> FeatvizClickError:
        return FeatvizUsageClickError(error) if isinstance(error, UsageError) else FeatvizClickError(error)

    def show(self, file: Any = None) -> None:
        stream = file or sys.stderr
        click.echo(f"Error: {self.message}", file=stream)
        if self.hint:
            click.echo(f"Hint: {self.hint}", file=stream)


class FeatvizUsageClickError(FeatvizClickError):
    """A :class:`~featviz.errors.UsageError`: exit code 2."""

    exit_code = 2


# --- help in sections ---------------------------------------------------------------------

#: The help sections, in the order ``--help`` lists them; options in no section come last, under
#: "Other options" (``--help`` itself).
SECTIONS = ("Model", "Layer", "Drawing", "Attention", "Class attention", "Transformer", "Atlas", "Output", "Run")

_SECTION_OF: weakref.WeakKeyDictionary[click.Parameter, str] = weakref.WeakKeyDictionary()


class SectionedCommand(click.Command):
    """A command whose ``--help`` lists its options in sections ("Model options:", "Drawing
    options:", …) instead of one block of 45. The section of each option is named where the
    option is declared: by the bundle that holds it (:func:`in_section`) or by the command
    (:func:`help_sections`). click's own means only: no extension to depend on."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None and not isinstance(param, click.Argument):  # arguments are in the usage line
                sections.setdefault(_SECTION_OF.get(param, ""), []).append(record)
        order = [*SECTIONS, *sorted(set(sections) - {*SECTIONS, ""}), ""]
        for name in order:
            if name in sections:
                with formatter.section(f"{name} options" if name else "Other options"):
                    formatter.write_dl(sections[name])


def in_section(section: str, *decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Apply click option ``decorators`` and list their options under ``section`` in ``--help``."""

    def apply(function: F) -> F:
        before = len(getattr(function, "__click_params__", []))
        function = _compose(*decorators)(function)
        for param in getattr(function, "__click_params__", [])[before:]:
            _SECTION_OF[param] = section
        return function

    return apply


def help_sections(**sections: Iterable[str]) -> Callable[[F], F]:
    """Put a command's own options in help sections, by parameter name: placed right under the
    command decorator, ``@help_sections(Run=("recursive", "shard"))`` (``Class_attention`` for
    "Class attention"). A name that is not an option of the command is a programming error."""

    def apply(function: F) -> F:
        params = {param.name: param for param in getattr(function, "__click_params__", [])}
        for section, names in sections.items():
            for name in names:
                if name not in params:
                    raise TypeError(f"help_sections: {function.__name__} has no option {name!r}")
                _SECTION_OF[params[name]] = section.replace("_", " ")
        return function

    return apply


class FeatvizGroup(click.Group):
    """click's own usage errors (a bad option value, an unknown option or command) in featviz's
    style: one ``Error: …`` line and a ``Hint:`` naming the help to read, exit 2; click would
    print its usage block and ``Error: Invalid value …`` instead. Its commands list their
    options in help sections (:class:`SectionedCommand`)."""

    command_class = SectionedCommand

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as error:
            raise _usage_error(error) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as error:  # raised while parsing a command's options, or by the command
            raise _usage_error(error) from None


def _usage_error(error: click.UsageError) -> FeatvizClickError:
    message = error.format_message().strip().rstrip(".")
    message = message[:1].lower() + message[1:]  # "Invalid value for ..." reads like featviz's messages
    # the command as a user types it (the root's own name depends on how click was started)
    path = " ".join(["featviz", *(error.ctx.command_path.split()[1:] if error.ctx is not None else [])])
    return FeatvizClickError.of(UsageError(message, hint=f"run `{path} --help` for the options"))


def reports_errors(command: F) -> F:
    """Turn :class:`FeatvizError` into a clean message and exit code instead of a traceback;
    Ctrl-C ends with the shell's usual 130 (every file already written is whole)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FeatvizError as error:
            raise FeatvizClickError.of(error) from None
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


def _json_object(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, Any] | None:
    """``--model-kwargs``: a JSON object, or a usage error (exit 2) saying what is wrong."""
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{value!r} is not JSON ({exc.msg})", param_hint="--model-kwargs") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter(f"{value!r} is not a JSON object like '{{\"drop_rate\": 0.1}}'",
                                 param_hint="--model-kwargs")
    return parsed


model_options = in_section("Model",
    click.option("--model", "-m", default="alexnet", show_default=True,
                 help="torchvision classification model name, timm:NAME (a timm model), a TorchScript file, "
                      "or package.module:factory (or path/to/file.py:factory)."),
    click.option("--model-kwargs", default=None, metavar="JSON", callback=_json_object,
                 help="Constructor arguments of a timm or torchvision model, as a JSON object."),
    click.option("--weights", "-w", default="DEFAULT", show_default=True,
                 help="DEFAULT, a torchvision weights name (IMAGENET1K_V1), pretrained (timm's own), none (random, "
                      "seeded), or a state-dict file (.pth/.pt or .safetensors; torchvision's own file names, e.g. "
                      "alexnet-owt-7be5be79.pth, are recognised)."),
    click.option("--weights-file", default=None, type=click.Path(dir_okay=False, path_type=Path),
                 help="Load the torchvision weights named by --weights from this file (offline; any file name)."),
    click.option("--trust-pickle", is_flag=True,
                 help="Also load pickled Python objects (a whole torch.save(model) as --model, a checkpoint with "
                      "non-tensor entries as --weights). Unpickling runs code from the file: only for files you "
                      "trust."),
    click.option("--seed", default=0, show_default=True, type=int, help="Seed for --weights none."),
    click.option("--device", default="cpu", show_default=True, help="auto, cpu, cuda, cuda:N or mps."),
)

preprocess_options = in_section("Model",
    click.option("--resize", type=int, default=None,
                 help="Resize the shorter side to this many pixels (default: the weights' own, else 256)."),
    click.option("--crop", type=int, default=None,
                 help="Centre-crop to this square size (default: the weights' own, else 224)."),
    click.option("--no-crop", is_flag=True, help="Do not crop: the network sees the whole resized photo."),
)

render_options = _compose(
    in_section("Layer",
        click.option("--layer", "-l", "layers", multiple=True,
                     help="Feature-stack index (negative from the end), dotted module path, or all; PATH@K: the "
                          "K-th call of a module that runs more than once (layer1.0.relu@2); repeatable and "
                          "comma-separated [default: 0; with --cam, the last feature map before global pooling, "
                          "e.g. ResNet's layer4]."),
    ),
    in_section("Drawing",
        click.option("--size", default=256, show_default=True, type=int, help="Side of each channel tile in pixels."),
        click.option("--cmap", default="gray", show_default=True, help="Matplotlib colormap for the grid."),
        click.option("--heat-cmap", default="jet", show_default=True, help="Matplotlib colormap for the overlays."),
        click.option("--alpha", default=0.5, show_default=True, type=float,
                     help="Opacity of the heat map over the photo."),
        click.option("--labels", is_flag=True, help="Write channel numbers on the grid tiles."),
        click.option("--channels", default=None, help="Channels to draw, like 0-15,32 (default: all)."),
        click.option("--top-k", type=int, default=None,
                     help="Draw only the N channels with the largest channel-attention weight."),
        click.option("--max-channels", type=int, default=None, help="At most N tiles in the grid."),
        click.option("--sort-by", type=click.Choice(["index", "weight"]), default="index", show_default=True,
                     help="Order of the grid tiles."),
    ),
    in_section("Attention",
        click.option("--spatial", type=click.Choice(["mean", "max", "meanmax", "learned"]), default=None,
                     help="Spatial attention: mean over channels, max, the average of both, or the spatial gate the "
                          "network learned (CBAM, BAM, Global Context) [default: mean; meanmax with --attention "
                          "cbam]."),
        click.option("--channel", type=click.Choice(["se", "cbam", "dct", "learned"]), default="se", show_default=True,
                     help="Channel attention: SE squeeze (average pooling), CBAM (average + max pooling), FcaNet's "
                          "DCT frequencies, or the learned channel gate of an attention module (SE, ECA, CBAM, GE, "
                          "GC, BAM)."),
        click.option("--attention", type=click.Choice(["separate", "cbam"]), default="separate", show_default=True,
                     help="separate: both maps from the raw features; cbam: channel attention first, spatial attention "
                          "of the channel-refined features (CBAM's order)."),
        click.option("--dct-frequencies", default=None, metavar="U,V;U,V…",
                     help="With --channel dct: frequencies on FcaNet's 7x7 grid [default: the paper's top16]."),
        click.option("--stn", is_flag=True,
                     help="Draw the sampling grid of the model's spatial transformer (its first affine_grid call) "
                          "over the photo."),
    ),
    in_section("Drawing",
        click.option("--normalize", type=click.Choice(["channel", "layer", "image"]), default="channel",
                     show_default=True,
                     help="Grey scale of the tiles: each channel on its own, one for the whole layer, or one across "
                          "all layers of the image."),
        click.option("--clip-percentile", type=float, default=None, metavar="P",
                     help="Clip tile values to the (100-P)th..Pth percentiles before scaling (e.g. 99.5), so hot "
                          "pixels cannot wash a tile out."),
    ),
    in_section("Output",
        click.option("--predict", is_flag=True, help="Also run the rest of the network and record the top-5 classes."),
        click.option("--save-raw", is_flag=True, help="Also write activations.npy and attention.npz."),
        click.option("--png-level", default=1, show_default=True, type=click.IntRange(0, 9),
                     help="PNG compression: 1-3 by ISA-L (fast), 0 none, 4-9 by zlib (files ~12% smaller, "
                          "export ~4x slower)."),
    ),
)

cam_options = in_section("Class attention",
    click.option("--cam", "cam", default=None, metavar="METHOD[,METHOD…]",
                 help="Class activation maps: cam, gradcam, gradcam++, xgradcam, layercam, hirescam, scorecam, "
                      "ablationcam, eigencam; for a vision transformer's blocks also rollout (attention rollout) "
                      "and relevance (Chefer et al.) (comma-separated); writes cam/<method>-<target>.png per layer."),
    click.option("--target", "target", multiple=True, default=("top",), show_default=True, metavar="T[,T…]",
                 help="Classes to explain: an index (281), a class name (tabby), top, or topN; comma-separated."),
    click.option("--cam-batch", default=32, show_default=True, type=click.IntRange(1, 65536),
                 help="Masked or ablated inputs per forward pass for scorecam and ablationcam."),
)


transformer_options = in_section("Transformer",
    click.option("--heads", is_flag=True,
                 help="Vision transformers: the class token's attention to the patches at each --layer block, one "
                      "overlay per head and their mean (heads/*.png; DINO's picture)."),
    click.option("--heads-threshold", type=float, default=None, metavar="P",
                 help="With --heads: also DINO's masks, the smallest set of patches holding P (0 < P <= 1) of each "
                      "head's mass (heads/*-mask.png)."),
    click.option("--heads-upsample", type=click.Choice(["nearest", "bilinear"]), default="nearest", show_default=True,
                 help="How the head maps are stretched over the photo: flat patches, or smooth."),
    click.option("--rollout-fusion", type=click.Choice(["mean", "max", "min"]), default="mean", show_default=True,
                 help="With --cam rollout: how the heads of a block are fused."),
    click.option("--rollout-discard", type=float, default=0.0, show_default=True, metavar="R",
                 help="With --cam rollout: drop the lowest fraction R of each fused attention matrix (never the "
                      "class token's row or column)."),
    click.option("--rollout-start", type=int, default=0, show_default=True, metavar="B",
                 help="With --cam rollout: multiply from block B (0 = the first) up to the chosen block."),
)


cam_score_options = in_section("Class attention",
    click.option("--cam-score", is_flag=True,
                 help="Score each class map's faithfulness: deletion and insertion (RISE) curves and AUCs in "
                      "summary.json and the manifest; prints the mean AUCs per method at the end. Needs --cam."),
    click.option("--cam-score-steps", default=16, show_default=True, type=click.IntRange(1, 4096),
                 help="Points on each deletion/insertion curve (one batched forward pass each)."),
)


def cam_methods(text: str | None) -> tuple[str, ...]:
    methods = tuple(p.strip().lower() for p in (text or "").split(",") if p.strip())
    if text is not None and not methods:  # --cam "": a usage error, not "no class maps"
        raise UsageError("--cam names no method", hint="e.g. --cam gradcam, or leave --cam out for no class maps")
    return methods


run_options = _compose(
    in_section("Output",
        click.option("--out", "-o", "out", default="featviz-out", show_default=True,
                     type=click.Path(file_okay=False, path_type=Path), help="Output folder."),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout."),
    ),
    in_section("Run",
        click.option("--batch-size", default=None, type=click.IntRange(1, 4096),
                     help="Photos per forward pass [default: 1 on the CPU, where larger batches measured no faster "
                          "and cost memory; 8 on a GPU]."),
        click.option("--workers", default=None, type=click.IntRange(1, 512),
                     help="PNG-encoding threads [default: number of cores]."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
        click.option("--progress", is_flag=True, help="Show the progress bar even when stderr is not a terminal."),
    ),
)


def show_default_layer(visualizer: Any) -> None:
    """--cam (or --heads, --vit-stats, ...) without --layer: which layer the library chose (stderr, so stdout
    stays the paths)."""
    ref = visualizer.default_layer
    if ref is not None:
        where = f"layer {ref.index}, " if ref.index is not None else ""
        what = "the last transformer block" if visualizer.default_layer_is_block else \
            "the last feature map before global pooling"
        drawn = "--cam without --layer: drawing class maps" if visualizer.options.cam else "no --layer: drawing"
        click.echo(f"note: {drawn} at {ref.path} ({where}{what}); name another with --layer", err=True)


def show_notes(loaded: Any) -> None:
    """The model loader's warnings (e.g. a weights file that is not the official one), on stderr."""
    for note in loaded.notes:
        click.echo(f"warning: {note}", err=True)


def report_found(found: Any, quiet: bool) -> None:
    """What input discovery left out, on stderr: an ``error:`` line per missing input (each one
    counts as failed in the summary and the exit code), and once, the files and featviz output
    folders that were not taken as inputs."""
    for missing in found.missing:
        click.echo(f"error: {missing}: no such file, folder or matching glob", err=True)
    skipped = found.skipped_hidden + found.skipped_not_image
    if skipped and not quiet:
        click.echo(f"skipped {found.skipped_hidden} hidden and {found.skipped_not_image} non-image file(s)", err=True)
    if found.output_folders and not quiet:
        files = f" ({found.skipped_output} named file(s))" if found.skipped_output else ""
        click.echo(f"skipped featviz output folder(s){files}, never read as input: "
                   f"{', '.join(found.output_folders[:3])}{' ...' if len(found.output_folders) > 3 else ''}", err=True)


def progress_enabled(params: dict[str, Any]) -> bool:
    if params["quiet"]:
        return False
    return bool(params["progress"]) or sys.stderr.isatty()


def parse_shard(text: str | None) -> tuple[int, int] | None:
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
