#!/usr/bin/env python3
"""Study mixing rules and reject thresholds in numpy, on the report's own inputs.

`mnister-train dump-sets --out DIR` writes every set the trainer's report
scores (validation with its field renderings, MNIST test, every field row, the
non-digits) as the model sees them, after the server's preprocessing. This
script runs ONNX models on those tensors once (cached under DIR/probs/), mixes
them, and recomputes what the report would say: the temperature, the
per-form reject thresholds (`calibrate::threshold_for_groups`: clean
validation digits at the target, each field form at 1 - 5 x (1 - target)),
coverage and kept accuracy on every row, ECE, and the non-digit catch.

It is an independent second implementation of the report's calibration: for
the default's three members at shares 0.25/0.25/0.5 it gives T 0.858, the
99.9% threshold 0.9801, MNIST test coverage 97.33% and 85.1% of letters
caught, as the Rust report does. It looks at MNIST test and the field test
rows only to print them; nothing here chooses anything on them.

    python3 -m venv .venv-study
    .venv-study/bin/pip install -r scripts/study-requirements.txt
    target/release/mnister-train dump-sets --out runs/sets
    .venv-study/bin/python scripts/study-sets.py runs/sets \\
        a.onnx:0.25 b.onnx:0.25 c.onnx:0.5 [--pool linear] [--gate g.onnx]

--gate mixes the pooled probabilities with the uniform distribution by a
sigmoid of the gate model's entropy (the gate lets through 99.9% of clean
validation digits, --gate-keep): a model trained with outlier exposure
is flat on what it learned is not a digit, and its flatness can then lower
the served confidence, which a log-linear pool cannot (a flat member adds the
same constant to every class).
"""

import argparse
import hashlib
import json
import os
import sys

import numpy as np

TARGETS = (0.99, 0.995, 0.999)
FIELD_RISK_FACTOR = 5.0


def load_sets(d):
    m = json.load(open(os.path.join(d, "manifest.json")))
    sets = {}
    for s in m["sets"]:
        f = s["file"]
        sets[f] = dict(s, y=np.load(f"{d}/{f}.y.npy"), kept=np.load(f"{d}/{f}.kept.npy").astype(bool))
    return sets


def member_probs(d, model, sets):
    """Probabilities of `model` on every set, cached by the model's sha256."""
    import onnxruntime as ort

    sha = hashlib.sha256(open(model, "rb").read()).hexdigest()[:16]
    cache = os.path.join(d, "probs", sha)
    os.makedirs(cache, exist_ok=True)
    out, sess = {}, None
    for f in sets:
        path = os.path.join(cache, f + ".npy")
        if not os.path.exists(path):
            if sess is None:
                so = ort.SessionOptions()
                so.intra_op_num_threads = os.cpu_count() or 1
                sess = ort.InferenceSession(model, so)
            x = np.load(f"{d}/{f}.x.npy", mmap_mode="r")
            name = sess.get_inputs()[0].name
            chunks = [sess.run(None, {name: np.ascontiguousarray(x[i : i + 512])})[0] for i in range(0, len(x), 512)]
            np.save(path, np.concatenate(chunks) if chunks else np.zeros((0, 10), np.float32))
        out[f] = np.load(path).astype(np.float64)
    return out


def softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def entropy(p):
    return -(p * np.log(np.maximum(p, 1e-30))).sum(1)


def with_temperature(p, t):
    return softmax(np.log(np.maximum(p, 1e-300)) / t)


def fit_temperature(p, y):
    """Golden section on log T in [1/4, 8], as `calibrate::fit_temperature`."""
    lp = np.log(np.maximum(p, 1e-300))

    def nll(lt):
        q = lp / np.exp(lt)
        q = q - q.max(1, keepdims=True)
        return -(q[np.arange(len(y)), y] - np.log(np.exp(q).sum(1))).mean()

    a, b, g = np.log(0.25), np.log(8.0), (5**0.5 - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(40):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(d)
    return float(np.exp((a + b) / 2))


def ece(p, y, bins=15):
    c, ok = p.max(1), p.argmax(1) == y
    b = np.minimum((c * bins).astype(int), bins - 1)
    return sum(abs(c[b == i].sum() - ok[b == i].sum()) for i in range(bins)) / max(len(y), 1)


def threshold_for_groups(groups, target):
    """The lowest confidence at which group 0 keeps `target` and every other
    group 1 - FIELD_RISK_FACTOR * (1 - target); None when none does."""
    bars = [target] + [1 - FIELD_RISK_FACTOR * (1 - target)] * (len(groups) - 1)
    c = np.concatenate([g[0] for g in groups])
    ok = np.concatenate([g[1] for g in groups])
    gi = np.concatenate([np.full(len(g[0]), i) for i, g in enumerate(groups)])
    o = np.argsort(-c, kind="stable")
    c, ok, gi = c[o], ok[o], gi[o]
    good = np.ones(len(c), bool)
    for i, bar in enumerate(bars):
        good &= np.cumsum((gi == i) & ok) >= bar * np.cumsum(gi == i) - 1e-9
    idx = np.nonzero(good & np.append(c[1:] < c[:-1], True))[0]
    return float(c[idx[-1]]) if len(idx) else None


def mix(probs, shares, f, rule, gate=None):
    if rule == "log":
        p = softmax(sum(w * np.log(np.maximum(probs[i][f], 1e-38)) for i, w in enumerate(shares)))
    else:
        p = sum(w * probs[i][f] for i, w in enumerate(shares))
    if gate is not None:
        gp, h0, k = gate
        g = 1 / (1 + np.exp(-k * (h0 - entropy(gp[f]))))
        p = g[:, None] * p + (1 - g[:, None]) * 0.1
    return p


def explain(groups, th, val, pv, probs, paths, clean):
    """What sets the 99.9% threshold, as the report's "What sets each
    threshold" table (`calibrate::set_by`), and the clean validation mistakes
    kept above the lowest threshold any group needs: when every member reads
    them the same way, no share vector can push them under it."""
    target = TARGETS[-1]
    names = ["clean validation"] + list(val["forms"])
    print("  what each validation group alone needs for 99.9% (clean) / 99.5% (forms):")
    for i, (name, g) in enumerate(zip(names, groups)):
        need = threshold_for_groups([g], target if i == 0 else 1 - FIELD_RISK_FACTOR * (1 - target))
        c = g[0]
        print(f"    {name:<24} needs {need or 0:.4f}  accuracy {g[1].mean():.2%}" + (f"  coverage at it {(c >= need).mean():.2%}" if need else ""))
    if th is None:
        return
    y = val["y"][:clean]
    c, a = pv[:clean].max(1), pv[:clean].argmax(1)
    kept = np.nonzero((a != y) & (c >= th))[0]
    kept = kept[np.argsort(-c[kept])]
    allowed = (1 - target) * (c >= th).sum()
    print(f"  clean validation mistakes kept at {th:.4f}: {len(kept)} (99.9% allows {allowed:.1f}); each member's answer / p(answer):")
    for i in kept:
        members = " ".join(f"{os.path.basename(m)[:14]}:{probs[j]['validation'][i].argmax()}/{probs[j]['validation'][i][a[i]]:.3f}" for j, m in enumerate(paths))
        agree = sum(probs[j]["validation"][i].argmax() == a[i] for j in range(len(paths)))
        print(f"    #{i:<5} label {y[i]} read {a[i]} at {c[i]:.4f}, {agree}/{len(paths)} members agree | {members}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sets", help="a folder written by `mnister-train dump-sets`")
    ap.add_argument("members", nargs="+", help="MODEL.onnx[:SHARE]")
    ap.add_argument("--pool", choices=["log", "linear"], default="log")
    ap.add_argument("--gate", help="a model whose entropy gates the answer towards uniform")
    ap.add_argument("--gate-keep", type=float, default=0.999)
    ap.add_argument("--gate-steepness", type=float, default=8.0, help="per nat of entropy")
    ap.add_argument("--json", help="also write the numbers here")
    ap.add_argument(
        "--explain",
        action="store_true",
        help="print what sets the 99.9%% threshold: each validation group's own need, and the clean "
        "validation mistakes kept above it with every member's reading",
    )
    a = ap.parse_args()

    sets = load_sets(a.sets)
    paths = [m.rsplit(":", 1)[0] if ":" in m else m for m in a.members]
    shares = np.array([float(m.rsplit(":", 1)[1]) if ":" in m else 1.0 for m in a.members])
    if (shares <= 0).any():
        sys.exit("shares must be positive")
    shares = shares / shares.sum()
    probs = [member_probs(a.sets, p, sets) for p in paths]
    val = sets["validation"]
    clean, per = val["clean"], val["per_form"]
    assert val["kept"].all(), "every validation rendering is expected to pass the preprocessing"
    gate = None
    if a.gate:
        gp = member_probs(a.sets, a.gate, sets)
        # As `ensemble::gate_entropy`: the ceil(keep * n)-th smallest.
        h = np.sort(entropy(gp["validation"][:clean]))
        h0 = float(h[min(max(int(np.ceil(a.gate_keep * len(h))), 1), len(h)) - 1])
        gate = (gp, h0, a.gate_steepness)

    pv = mix(probs, shares, "validation", a.pool, gate)
    yv = val["y"]
    t = fit_temperature(pv, yv)
    pv = with_temperature(pv, t)
    bounds = [(0, clean)] + [(clean + i * per, clean + (i + 1) * per) for i in range(len(val["forms"]))]
    groups = [(pv[s:e].max(1), pv[s:e].argmax(1) == yv[s:e]) for s, e in bounds]
    ths = [threshold_for_groups(groups, target) for target in TARGETS]
    out = dict(temperature=t, thresholds=ths, gate_entropy=gate[1] if gate else None, rows={})
    print(f"T {t:.3f}  thresholds " + "  ".join(f"{x:.1%}: {th:.4f}" if th else f"{x:.1%}: none" for x, th in zip(TARGETS, ths)))
    if a.explain:
        explain(groups, ths[-1], val, pv, probs, paths, clean)
    for f, s in sets.items():
        if f == "validation":
            continue
        y, k = s["y"], s["kept"]
        n = len(y)
        p = with_temperature(mix(probs, shares, f, a.pool, gate), t)
        c = p.max(1)
        if s.get("nondigit"):
            caught = [float((n - k.sum() + (c < th).sum()) / n) if th else 0.0 for th in ths]
            out["rows"][s["set"]] = dict(caught=caught)
            print(f"  {s['set'][:48]:<48} caught at each threshold: " + " ".join(f"{x:.1%}" for x in caught))
            continue
        ok = p.argmax(1) == y[k]
        kept = [(float((c >= th).sum() / n), float(ok[c >= th].mean())) if th else (0.0, 0.0) for th in ths]
        row = dict(accuracy=float(ok.sum() / n), ece=float(ece(p, y[k])), kept=kept)
        out["rows"][s["set"]] = row
        cov, acc = kept[-1]
        print(f"  {s['set'][:48]:<48} accuracy {row['accuracy']:.2%}  ECE {row['ece']:.2%}  at 99.9%: coverage {cov:.2%}, kept {acc:.3%}")
    if a.json:
        json.dump(out, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
