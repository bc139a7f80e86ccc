"""``featviz layers``: the layers ``--layer`` can name, with their output shapes and learned gates.

A command of the ``featviz`` group (:mod:`featviz.cli.main` registers it); like every command it
only parses, calls the library (:func:`featviz.capture.hooks.describe_layers`) and prints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from featviz.cli.common import (
    SectionedCommand,
    help_sections,
    model_options,
    preprocess_options,
    reports_errors,
    show_notes,
)
from featviz.errors import UsageError


@click.command(cls=SectionedCommand)
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
    not downloaded for this: only a state-dict file is loaded, to check that it fits. A module
    that runs more than once in a pass (a ResNet block's relu) is marked [runs 2×]: name one of
    its calls with --layer PATH@K (K from 1).
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
        if (row.get("calls") or 0) > 1:  # one module object, several outputs: pick one with PATH@K
            mark += f"  [runs {row['calls']}×]"
        click.echo(f"{index:>5}  {row['path']:<{width}}  {row['type']:<{type_width}}  {shape}{mark}")
    if kinds and not include_all:
        first = next(iter(kinds))
        click.echo(f"{len(se_blocks)} squeeze-and-excitation blocks (learned channel gates) among {len(kinds)} "
                   f"learned attention modules, e.g. {first} ({', '.join(kinds[first])}): `--all` lists them; show "
                   "their gates with --layer PATH --channel learned or --spatial learned")
