#!/usr/bin/env bash
# Regenerates the README's pictures from sample_images/ (random weights: no download needed).
# Run from the repository root with featviz installed: bash docs/make_pictures.sh
set -euo pipefail
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cat=sample_images/chelsea.jpg
featviz show "$cat" --layer 0 --weights none --out "$out/plain" --quiet >/dev/null
featviz show "$cat" --layer 3 --weights none --attention cbam --out "$out/cbam" --quiet >/dev/null
featviz show "$cat" --layer 3 --weights none --channel dct --out "$out/dct" --quiet >/dev/null
featviz show "$cat" --model mobilenet_v3_small --layer features.1 --weights none --channel learned \
    --out "$out/se" --quiet >/dev/null
featviz sweep "$cat" --weights none --out "$out/sweep" >/dev/null
PYTHONPATH=tests featviz show "$cat" --model stnmodels:fixed_stn --weights none --stn --out "$out/stn" \
    --quiet >/dev/null
python - "$out" <<'PY'
import sys
from PIL import Image

out = sys.argv[1]
def save(src, dst, width=None):
    image = Image.open(f"{out}/{src}")
    if width and image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    image.save(f"docs/{dst}", optimize=True)

save("plain/chelsea/features.0/grid.png", "chelsea-grid.png", 512)
save("plain/chelsea/features.0/spatial_attention.png", "chelsea-spatial.png")
save("plain/chelsea/features.0/channel_attention.png", "chelsea-channel.png")
save("cbam/chelsea/features.3/spatial_attention.png", "chelsea-cbam-spatial.png")
save("dct/chelsea/features.3/channel_attention.png", "chelsea-dct-channel.png")
save("se/chelsea/features.1.block.1/se_reweight.png", "chelsea-se-reweight.png", 900)
save("stn/chelsea/features.0/stn_grid.png", "chelsea-stn-grid.png")
save("sweep/chelsea/sweep.png", "chelsea-sweep.png", 1100)
PY
# The atlas pictures (README "Atlas"): 20 photos made from the samples at four scales and crops.
python benchmarks/atlas.py --make-photos 20 --folder "$out/atlas-photos"
featviz atlas "$out/atlas-photos" --weights none --layer features.10 --top 5 --out "$out/atlas" --quiet
python - "$out" <<'PY'
import sys
from PIL import Image

out = sys.argv[1]
Image.open(f"{out}/atlas/features.10/channels/0003.png").save("docs/atlas-channel.png", optimize=True)
layer = Image.open(f"{out}/atlas/features.10/atlas.png")
small = layer.resize((640, round(layer.height * 640 / layer.width)), Image.LANCZOS)
small.quantize(256, dither=Image.Dither.NONE).save("docs/atlas-layer.png", optimize=True)
PY
echo "pictures written to docs/ (docs/report.png is a headless-Chromium screenshot of an export's index.html)"

# "Explaining a class": several CAM methods side by side (ResNet-18 layer4, random weights).
cams=$(mktemp -d)
featviz show "$cat" --model resnet18 --weights none --layer layer4 --target top \
    --cam gradcam,gradcam++,layercam,scorecam,ablationcam,eigencam --cam-batch 64 --out "$cams" --quiet >/dev/null
python - "$cams" <<'PY'
import json
import sys
from PIL import Image, ImageDraw

folder = f"{sys.argv[1]}/chelsea/layer4"
summary = json.load(open(f"{folder}/summary.json"))
left, top, right, bottom = (round(v) for v in summary["crop_box"])
panels = []
for record in summary["cams"]:
    with Image.open(f"{folder}/{record['file']}") as image:
        panels.append((record["method"], image.crop((left, top, right, bottom)).resize((180, 180), Image.LANCZOS)))
sheet = Image.new("RGB", (180 * len(panels), 200), "white")
draw = ImageDraw.Draw(sheet)
for i, (method, panel) in enumerate(panels):
    sheet.paste(panel, (180 * i, 20))
    draw.text((180 * i + 6, 4), method, fill="black")
sheet.quantize(128, dither=Image.Dither.NONE).save("docs/chelsea-cams.png", optimize=True)  # small: a palette
PY
rm -rf "$cams"
