#!/usr/bin/env bash
# Regenerates docs/vitcli-statistics.png, docs/vitcli-pca.png and docs/vitcli-artifacts.png for
# docs/vit-statistics.md THROUGH THE COMMAND LINE, from the trained example examples/vit_shapes.py
# (+ .safetensors) on 24 held-out photos (seed 123, the photos of tests/test_vit_example.py): export
# over all 24, then sweep over the first three. Prints the run average and the time each command took.
# Run from the repository root with featviz installed: bash docs/make_vitcli_pictures.sh
set -euo pipefail
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python - "$work/photos" <<'PY'
import importlib.util
import sys
from pathlib import Path

import numpy as np
from PIL import Image

spec = importlib.util.spec_from_file_location("vit_shapes", "examples/vit_shapes.py")
shapes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shapes)
folder = Path(sys.argv[1])
folder.mkdir()
rng = np.random.default_rng(123)
for i in range(24):
    pixels, _, _ = shapes.photo(rng)
    Image.fromarray(pixels).save(folder / f"photo{i:02d}.png")
PY
start=$(date +%s%N)
featviz export "$work/photos" --model examples/vit_shapes.py:build --weights examples/vit_shapes.safetensors \
    --resize 64 --crop 64 --layer blocks.3 --top-k 1 --vit-stats --artifacts --pca-tokens \
    --out "$work/out" --quiet
end=$(date +%s%N)
featviz sweep "$work/photos/photo00.png" "$work/photos/photo01.png" "$work/photos/photo02.png" \
    --model examples/vit_shapes.py:build --weights examples/vit_shapes.safetensors \
    --resize 64 --crop 64 --vit-stats --artifacts --pca-tokens --out "$work/sweep" > /dev/null
swept=$(date +%s%N)
python - "$work" <<'PY'
import json
import sys
from pathlib import Path

from PIL import Image

work = Path(sys.argv[1])
out = work / "out"
Image.open(out / "attention_statistics.png").convert("RGB").save("docs/vitcli-statistics.png", optimize=True)
Image.open(work / "sweep" / "photo00" / "artifacts.png").convert("RGB").save("docs/vitcli-artifacts.png",
                                                                             optimize=True)
side, gap = 192, 6
rows = []
for key in ("photo00", "photo01", "photo02"):
    photo = Image.open(work / "photos" / f"{key}.png").convert("RGB")
    panels = [photo, Image.open(out / key / "blocks.3" / "pca.png"),
              Image.open(work / "sweep" / key / "blocks.1" / "pca.png"),
              Image.open(work / "sweep" / key / "blocks.3" / "pca.png")]
    rows.append([p.convert("RGB").resize((side, side), Image.Resampling.NEAREST) for p in panels])
sheet = Image.new("RGB", (4 * side + 3 * gap, len(rows) * side + (len(rows) - 1) * gap), "white")
for r, panels in enumerate(rows):
    for c, panel in enumerate(panels):
        sheet.paste(panel, (c * (side + gap), r * (side + gap)))
sheet.save("docs/vitcli-pca.png", optimize=True)
average = json.loads((out / "attention_statistics.json").read_text())
print(json.dumps({k: average[k] for k in ("photos", "mean_distance_px", "entropy_nats", "prefix_mass")}))
summary = json.loads((out / "photo00" / "blocks.3" / "summary.json").read_text())
print(json.dumps(summary["pca"]))
flags = [json.loads((out / f"photo{i:02d}" / "artifacts.json").read_text())["flagged_per_block"] for i in range(24)]
print("artifacts per block, mean over photos:", [round(sum(f[b] for f in flags) / len(flags), 2) for b in range(4)])
PY
echo "export took $(( (end - start) / 1000000 )) ms, sweep $(( (swept - end) / 1000000 )) ms;" \
    "wrote docs/vitcli-statistics.png docs/vitcli-pca.png docs/vitcli-artifacts.png"
