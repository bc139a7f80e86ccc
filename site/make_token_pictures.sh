#!/usr/bin/env bash
# Regenerates docs/tokens-deit.png, docs/tokens-swin.png and docs/tokens-sweep.png for
# docs/vision-transformers.md ("Token layers as feature maps") from sample_images/chelsea.jpg.
# Random, seeded weights (nothing is downloaded): the pictures show how token and channels-last
# layers are laid out, not what a trained DeiT or Swin sees.
# Run from the repository root with featviz installed: bash docs/make_token_pictures.sh
set -euo pipefail
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
featviz show sample_images/chelsea.jpg --model timm:deit_tiny_distilled_patch16_224 --weights none \
    --layer blocks.11 --top-k 4 --out "$out/deit" --quiet >/dev/null
featviz show sample_images/chelsea.jpg --model swin_t --weights none --layer features.5 --top-k 4 \
    --out "$out/swin" --quiet >/dev/null
featviz sweep sample_images/chelsea.jpg --model timm:deit_tiny_distilled_patch16_224 --weights none \
    --layer 0,3,6,9,11 --out "$out/sweep" >/dev/null
python - "$out" <<'PY'
import sys
from pathlib import Path

from PIL import Image

root = Path(sys.argv[1])


def strip(folder: Path, names: list[str], target: str, width: int = 240) -> None:
    pictures = [Image.open(folder / name).convert("RGB") for name in names]
    pictures = [p.resize((width, round(p.height * width / p.width)), Image.LANCZOS) for p in pictures]
    canvas = Image.new("RGB", (width * len(pictures), max(p.height for p in pictures)), "white")
    for i, picture in enumerate(pictures):
        canvas.paste(picture, (i * width, 0))
    canvas.save(f"docs/{target}", optimize=True)


strip(root / "deit/chelsea/blocks.11", ["grid.png", "spatial_attention.png"], "tokens-deit.png")
strip(root / "swin/chelsea/features.5", ["grid.png", "spatial_attention.png"], "tokens-swin.png")
sweep = Image.open(root / "sweep/chelsea/sweep.png").convert("RGB")
sweep.thumbnail((1200, 1200), Image.LANCZOS)
sweep.save("docs/tokens-sweep.png", optimize=True)
PY
