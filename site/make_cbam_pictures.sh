#!/usr/bin/env bash
# The README's learned-attention pictures, from the trained example network (examples/cbam_shapes).
# Run from the repository root with featviz installed: bash docs/make_cbam_pictures.sh
set -euo pipefail
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
python - "$out" <<'PY'
import importlib.util, sys
import numpy as np
from PIL import Image

spec = importlib.util.spec_from_file_location("cbam_shapes", "examples/cbam_shapes.py")
shapes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shapes)
rng = np.random.default_rng(7)
margin = shapes.RADIUS + 1
for i in range(3):  # held-out photos (seed 7), 80x64, shown 4x larger
    pixels, label, _ = shapes.photo(rng, 80, 64, region=(8 + margin, margin, 72 - margin, 64 - margin))
    Image.fromarray(pixels).resize((320, 256), Image.NEAREST).save(f"{sys.argv[1]}/shapes{i}.png")
PY
featviz show "$out"/shapes0.png "$out"/shapes1.png "$out"/shapes2.png --model examples/cbam_shapes.py:build \
    --weights examples/cbam_shapes.safetensors --resize 64 --crop 64 --layer cbam2 \
    --channel learned --spatial learned --size 48 --alpha 0.45 --out "$out/show" --quiet >/dev/null
python - "$out" <<'PY'
import sys
from PIL import Image

out = sys.argv[1]
panels = [Image.open(f"{out}/show/shapes{i}/cbam2.channel/spatial_attention.png") for i in range(3)]
strip = Image.new("RGB", (sum(p.width for p in panels) + 8 * 2, panels[0].height), "white")
x = 0
for panel in panels:
    strip.paste(panel, (x, 0))
    x += panel.width + 8
strip.save("docs/cbam-shapes-spatial-learned.png", optimize=True)
Image.open(f"{out}/show/shapes0/cbam2.channel/se_reweight.png").save("docs/cbam-shapes-channel-learned.png",
                                                                       optimize=True)
PY
echo "pictures written to docs/cbam-shapes-*.png"
