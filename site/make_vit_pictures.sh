#!/usr/bin/env bash
# Regenerates docs/vit-heads.png and docs/vit-maps.png for docs/vit-attention.md from
# sample_images/chelsea.jpg. Random, seeded weights (nothing is downloaded): the pictures show
# what the files look like, not what a trained DeiT sees.
# Run from the repository root with featviz installed: bash docs/make_vit_pictures.sh
set -euo pipefail
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
featviz show sample_images/chelsea.jpg --model timm:deit_tiny_patch16_224 --weights none \
    --layer blocks.11 --heads --heads-threshold 0.6 --cam rollout,relevance --out "$out" --quiet >/dev/null
python - "$out" <<'PY'
import sys
from pathlib import Path

from PIL import Image

folder = next(Path(sys.argv[1]).rglob("blocks.11"))


def strip(names: list[str], target: str, width: int = 200) -> None:
    pictures = [Image.open(folder / name).convert("RGB") for name in names]
    pictures = [p.resize((width, round(p.height * width / p.width)), Image.LANCZOS) for p in pictures]
    canvas = Image.new("RGB", (width * len(pictures), max(p.height for p in pictures)), "white")
    for i, picture in enumerate(pictures):
        canvas.paste(picture, (i * width, 0))
    canvas.save(f"docs/{target}", optimize=True)


heads = ["heads/head-00.png", "heads/head-01.png", "heads/head-02.png", "heads/mean.png"]
strip(heads + ["heads/mean-mask.png"], "vit-heads.png")
cams = sorted(str(p.relative_to(folder)) for p in (folder / "cam").glob("*.png"))
strip(cams, "vit-maps.png")
PY
echo "wrote docs/vit-heads.png docs/vit-maps.png"
