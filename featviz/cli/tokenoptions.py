"""The option bundle of ``--vit-stats``, ``--artifacts`` and ``--pca-tokens`` (show, export and sweep).

Kept apart from :mod:`featviz.cli.common` (which holds every other bundle) so that module stays
small; the options join the help's "Transformer" section there.
"""

from __future__ import annotations

import click

from featviz.cli.common import in_section

__all__ = ["token_options"]

token_options = in_section("Transformer",
    click.option("--vit-stats", is_flag=True,
                 help="Vision transformers: per block and head the mean attention distance (px), entropy and "
                      "attention on prefix tokens, in OUT/<image>/attention_statistics.json and .png; the run's "
                      "mean in OUT/attention_statistics.json and .png."),
    click.option("--artifacts", type=float, is_flag=False, flag_value=3.0, default=None, metavar="[K]",
                 help="Vision transformers: flag high-norm artifact tokens per block (norm > median + K·1.4826·MAD, "
                      "K = 3 when not given) into OUT/<image>/artifacts.json; artifacts.png outlines them on the "
                      "photo, one panel per block."),
    click.option("--pca-tokens", is_flag=True,
                 help="The patch tokens of each --layer block (sweep: each stage) as colours: their first 3 "
                      "principal components as RGB, one basis per layer fitted over all photos of the run (pca.png)."),
    click.option("--pca-foreground", type=float, default=None, metavar="T",
                 help="With --pca-tokens: black out patches whose first-component score is not above T "
                      "(DINOv2's foreground: T = 0)."),
)
