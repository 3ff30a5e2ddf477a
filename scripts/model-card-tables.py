#!/usr/bin/env python3
"""Prints the model card's tables (models/mnist-cnn.md) from the committed
reports, so that the card's numbers are the reports' numbers:
docs/model/report.json (the trainer's), docs/model/int8-report.json and
docs/model/int8-field-scores.json (`mnister-train quantize` / `evaluate`),
and docs/model/before-field/report.json (the previous default model)."""
import json, os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
load = lambda p: json.load(open(os.path.join(ROOT, "docs/model", p)))
r, old, i8 = load("report.json"), load("before-field/report.json"), load("int8-report.json")
i8f = {f["row"]: f["accuracy"] for f in load("int8-field-scores.json")[0]["field"]}
pct = lambda v: f"{v * 100:.2f}%"
ok = lambda b: "✔" if b else "✘"

print("| field row (encoded bytes → `preprocess_encoded` → ONNX Runtime) | fp32 | int8 | int8 − fp32 | bar |")
print("|---|---|---|---|---|")
for f in r["field"]:
    if f["row"].startswith("served:"):
        continue
    bar = 0.95 if f["row"] == "thin-pen" else 0.97
    a, b = f["accuracy"], i8f[f["row"]]
    print(f"| {f['row']} | {pct(a)} | {pct(b)} | {(b - a) * 100:+.2f} | ≥ {bar * 100:.0f}% {ok(min(a, b) >= bar)} |")

print()
print("| robustness row (28×28 tensors) | before (99.54% model) | fp32 | int8 | fp32 − before | bar ≥ −0.30 |")
print("|---|---|---|---|---|---|")
before = {x["variant"]: x["accuracy"] for x in old["robustness"]}
for x in i8["robustness"]:
    d = x["fp32"] - before[x["variant"]]
    print(f"| {x['variant']} | {pct(before[x['variant']])} | {pct(x['fp32'])} | {pct(x['int8'])} | {d * 100:+.2f} | {ok(d >= -0.003)} |")

print()
print("| the same rows as PNG files through the server's preprocessing | fp32 | int8 |")
print("|---|---|---|")
for f in r["field"]:
    if f["row"].startswith("served:"):
        print(f"| {f['row'][len('served: '):]} | {pct(f['accuracy'])} | {pct(i8f[f['row']])} |")

c = r["calibration"]
print()
print(f"Temperature **{c['temperature']:.3f}**; thresholds chosen on validation: " + ", ".join(
    f"{t * 100:g}% kept → {th:.4f}" for t, th in zip(c["targets"], c["thresholds"])))
print()
head = "| set | ECE before | ECE after | " + " | ".join(f"{t * 100:g}% target: coverage / kept accuracy" for t in c["targets"]) + " |"
print(head)
print("|---|---|---|" + "---|" * len(c["targets"]))
for s in c["sets"]:
    print(f"| {s['set']} | {s['ece_before'] * 100:.2f}% | {s['ece_after'] * 100:.2f}% | " + " | ".join(
        f"{cov * 100:.1f}% / {acc * 100:.2f}%" for cov, acc in s["kept"]) + " |")
print()
print("| not a digit (1,000 each) | " + " | ".join(f"caught at {t * 100:g}%" for t in c["targets"]) + " |")
print("|---|" + "---|" * len(c["targets"]))
for n in r["nondigit"]:
    print(f"| {n['set']} | " + " | ".join(f"{v * 100:.1f}%" for v in n["caught"]) + " |")
