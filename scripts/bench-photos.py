#!/usr/bin/env python3
"""The photo path (issue 18): server time for one dark-on-light JPEG digit
photo at 640x480, 1920x1080 and 4000x3000 (12 MP), as `mnister classify`
reports it ("server us", the server's own total for the request: decode,
preprocessing, queue, inference).

The photos are the benchmark's own, generated here (seeded): an MNIST test
digit scaled to a fifth of the frame's height, dark ink on paper lit
unevenly, sensor noise, JPEG quality 90 with 4:2:0 chroma, as a phone writes.

`--accuracy N` also sends N photos of the first N test digits at each size
and counts right answers: a 12 MP photo is read from its JPEG DC
coefficients alone, a 640x480 one by a full decode, so the two counts say
whether the fast path costs accuracy.

Usage: scripts/bench-photos.py [--runs 7] [--accuracy 0] [--out runs/bench-photos]
Needs a release build (target/release/mnister-server, mnister) and Pillow
(scripts/bench-requirements.txt). Run on an idle machine.
MNISTER_BENCH_SERVER names another server binary (an A/B against an older
build).
"""
import argparse, gzip, json, os, random, re, signal, statistics, subprocess, sys, time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import free_ports  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
SIZES = [(640, 480), (1920, 1080), (4000, 3000)]


def digit(i):
    raw = gzip.open(os.path.join(ROOT, "tests/data/mnist/t10k-images-idx3-ubyte.gz")).read()
    return np.frombuffer(raw[16 + 784 * i:16 + 784 * (i + 1)], dtype=np.uint8).reshape(28, 28)


def test_labels(n):
    raw = gzip.open(os.path.join(ROOT, "tests/data/mnist/t10k-labels-idx1-ubyte.gz")).read()
    return list(raw[8:8 + n])


def photo(w, h, seed, label_index=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light = 150 + 85 * (0.6 * xx / w + 0.4 * (1 - yy / h))
    paper = light[..., None] * np.array([1.0, 0.97, 0.9], dtype=np.float32)
    side = h // 5
    d = Image.fromarray(digit(label_index)).resize((side, side), Image.BILINEAR)
    ink = np.asarray(d, dtype=np.float32) / 255.0
    x0, y0 = int(w * 0.55), int(h * 0.3)
    region = paper[y0:y0 + side, x0:x0 + side]
    paper[y0:y0 + side, x0:x0 + side] = region * (1 - ink[..., None]) + 40 * ink[..., None]
    paper += rng.normal(0, 5, paper.shape).astype(np.float32)
    return Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--accuracy", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "bench-photos"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    files = []
    for w, h in SIZES:
        p = os.path.join(a.out, f"photo-{w}x{h}.jpg")
        photo(w, h, seed=w).save(p, quality=90, subsampling=2)
        files.append(p)
    (grpc,) = free_ports(1)
    server = subprocess.Popen(
        [os.environ.get("MNISTER_BENCH_SERVER", f"{REL}/mnister-server"), "--grpc-addr", f"127.0.0.1:{grpc}", "--http-addr", "127.0.0.1:0",
         "--metrics-addr", "127.0.0.1:0", "--max-image-bytes", str(16 << 20), "--max-message-bytes", str(17 << 20)],
        cwd=ROOT, stderr=subprocess.PIPE, text=True)
    for line in server.stderr:
        if "serving" in line and "startup_ms" in line:
            break
    rows = []
    try:
        for p, (w, h) in zip(files, SIZES):
            us, digits = [], []
            for _ in range(a.runs):
                out = subprocess.run([f"{REL}/mnister", "--addr", f"http://127.0.0.1:{grpc}", "classify", "--json", p],
                                     capture_output=True, text=True, check=True).stdout
                r = json.loads(out.splitlines()[-1])
                us.append(r["server_us"])
                digits.append(r["digit"])
            rows.append({"size": f"{w}x{h}", "bytes": os.path.getsize(p), "server_ms_median": statistics.median(us) / 1000,
                         "server_ms_min": min(us) / 1000, "server_ms_max": max(us) / 1000, "digits": sorted(set(digits))})
        accuracy = {}
        labels = test_labels(a.accuracy)
        for w, h in SIZES if a.accuracy else []:
            right = 0
            for start in range(0, a.accuracy, 20):
                batch = []
                for i in range(start, min(start + 20, a.accuracy)):
                    p = os.path.join(a.out, f"acc-{w}x{h}-{i}.jpg")
                    photo(w, h, seed=1000 + i, label_index=i).save(p, quality=90, subsampling=2)
                    batch.append(p)
                out = subprocess.run([f"{REL}/mnister", "--addr", f"http://127.0.0.1:{grpc}", "classify", "--json", *batch],
                                     capture_output=True, text=True, check=True).stdout
                answers = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
                by_file = {r["file"]: r["digit"] for r in answers}
                for i, p in zip(range(start, start + len(batch)), batch):
                    right += by_file.get(os.path.basename(p), by_file.get(p)) == labels[i]
                    os.remove(p)
            accuracy[f"{w}x{h}"] = right
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "")
    simd = " ".join(f for f in ["avx2", "avx512f", "avx512_vnni", "avx_vnni"] if f" {f}" in flags)
    print(f"machine: {os.cpu_count()} cores, {cpu} ({simd}); command: scripts/bench-photos.py --runs {a.runs}")
    print("| photo | JPEG bytes | server ms, median | min | max | digit (label 7) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['bytes']:,} | {r['server_ms_median']:.1f} | {r['server_ms_min']:.1f} | {r['server_ms_max']:.1f} | {r['digits']} |")
    for size, right in accuracy.items():
        print(f"accuracy {size}: {right}/{a.accuracy} test digits right")
    json.dump({"timings": rows, "accuracy": accuracy, "accuracy_photos": a.accuracy},
              open(os.path.join(a.out, "results.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
