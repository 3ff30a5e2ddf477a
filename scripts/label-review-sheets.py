#!/usr/bin/env python3
"""Redraws the sheets of the blind label review (crates/train/data/label-review.csv)
from MNIST's training set, so anyone can check the readings:

- round{R}-sheet{K}.png: the sheets as the reviewer saw them, tile numbers only
  (no label, no prediction; candidates shuffled among random controls);
- mislabeled.png: the images left out of calibration, each with its label (top
  left) and the reading (bottom right).

usage: scripts/label-review-sheets.py [--mnist DIR] [--out DIR]   (needs Pillow)
"""
import argparse, csv, gzip, os
from PIL import Image, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S, PER, COLS = 84, 40, 10


def load(dir):
    def read(name, skip):
        for n in (name, name + ".gz"):
            p = os.path.join(dir, n)
            if os.path.exists(p):
                data = (gzip.open if n.endswith(".gz") else open)(p, "rb").read()
                return data[skip:]
        raise SystemExit(f"{name}(.gz) not found in {dir}; pass --mnist")
    return read("train-images-idx3-ubyte", 16), read("train-labels-idx1-ubyte", 8)


def tile(images, i):
    im = Image.frombytes("L", (28, 28), images[i * 784:(i + 1) * 784])
    return Image.eval(im, lambda v: 255 - v).resize((S, S), Image.NEAREST)


def sheet(images, items, path, caption):
    rows = (len(items) + COLS - 1) // COLS
    out = Image.new("L", (COLS * (S + 10), rows * (S + 24)), 255)
    d = ImageDraw.Draw(out)
    for j, r in enumerate(items):
        x, y = (j % COLS) * (S + 10), (j // COLS) * (S + 24)
        out.paste(tile(images, int(r["index"])), (x + 5, y + 20))
        top, bottom = caption(r)
        d.text((x + 5, y + 4), top, fill=0)
        if bottom:
            d.text((x + S - 20, y + S + 8), bottom, fill=0)
    out.save(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mnist", default=os.environ.get("MNIST_DIR", os.path.join(ROOT, "../shared/data/mnist")))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs/model/label-review"))
    a = ap.parse_args()
    images, _ = load(a.mnist)
    lines = [l for l in open(os.path.join(ROOT, "crates/train/data/label-review.csv")) if not l.startswith("#")]
    rows = list(csv.DictReader(lines))
    os.makedirs(a.out, exist_ok=True)
    for rnd in sorted({r["round"] for r in rows}):
        items = sorted((r for r in rows if r["round"] == rnd), key=lambda r: int(r["tile"]))
        for k in range(0, len(items), PER):
            sheet(images, items[k:k + PER], os.path.join(a.out, f"round{rnd}-sheet{k // PER}.png"),
                  lambda r: (r["tile"], None))
    bad = [r for r in rows if r["verdict"] == "mislabeled"]
    sheet(images, bad, os.path.join(a.out, "mislabeled.png"),
          lambda r: (f"#{r['index']} label {r['label']}", r["reading"]))
    print(f"{len(rows)} reviewed, {len(bad)} mislabeled; sheets in {a.out}")


main()
