#!/usr/bin/env python3
"""int8 vs fp32 (issue 9), measured in one run on one machine: the raw ONNX
Runtime batch sweep for both files, then the server (stream and unary
throughput, open-loop latency) with each model in turn.

Usage: scripts/bench-int8.py [--fp32 models/mnist-cnn.onnx]
                             [--int8 models/mnist-cnn.int8.onnx]
                             [--seconds 3] [--duration 10s] [--out runs/bench-int8]
Prints Markdown for docs/benchmarks.md and writes results.json to --out.
Run it on an otherwise idle machine; the client shares the CPU with the
server, as in scripts/bench.py.
"""
import argparse, json, os, re, signal, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import free_ports  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
LAYOUTS = ["1x2", "2x1"]


def sh(cmd):
    return subprocess.run(cmd, check=True, cwd=ROOT, text=True, capture_output=True).stdout


class Server:
    def __init__(self, model):
        self.grpc, self.metrics = free_ports(2)
        self.p = subprocess.Popen(
            [f"{REL}/mnister-server", "--model", model, "--grpc-addr", f"127.0.0.1:{self.grpc}",
             "--metrics-addr", f"127.0.0.1:{self.metrics}", "--http-addr", "127.0.0.1:0"],
            cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ, "RUST_LOG": "info,ort=warn"})
        self.startup_ms = None
        for line in self.p.stderr:
            m = re.search(r"startup_ms=(\d+)", line)
            if m:
                self.startup_ms = int(m.group(1))
                break
        if self.startup_ms is None:
            raise SystemExit(f"server with {model} did not start")

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(timeout=30)


def client(server, *args):
    out = sh([f"{REL}/mnister", "--addr", f"http://127.0.0.1:{server.grpc}", "bench", "--json", *args])
    return json.loads(out)


def raw(model, layout, seconds):
    out = sh([f"{REL}/mnister-baseline", "--model", model, "--json", "--batch", ",".join(map(str, BATCHES)),
              "--layouts", layout, "--seconds", str(seconds)])
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def loadavg():
    return open("/proc/loadavg").read().split()[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fp32", default="models/mnist-cnn.onnx")
    ap.add_argument("--int8", default="models/mnist-cnn.int8.onnx")
    ap.add_argument("--seconds", default="3")
    ap.add_argument("--duration", default="10s")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "bench-int8"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if not a.no_build:
        sh(["cargo", "build", "--release", "--bin", "mnister-server", "--bin", "mnister", "--bin", "mnister-baseline"])
    models = {"fp32": a.fp32, "int8": a.int8}
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    res = {"machine": {"cores": os.cpu_count(), "cpu": cpu, "loadavg_start": loadavg()}, "raw": {}, "server": {}}
    print(f"machine: {os.cpu_count()} cores, {cpu}; load average at start {loadavg()}; "
          f"command: scripts/bench-int8.py --seconds {a.seconds} --duration {a.duration}")

    # Raw sweep, the two models alternating per layout.
    for lay in LAYOUTS:
        for name, path in models.items():
            res["raw"].setdefault(name, []).extend(raw(path, lay, a.seconds))
    print("\n### Raw ONNX Runtime (in process, img/s)\n")
    print("| model | layout | " + " | ".join(f"batch {b}" for b in BATCHES) + " |")
    print("|---|---|" + "---|" * len(BATCHES))
    for lay in LAYOUTS:
        for name in models:
            v = {r["batch"]: r["images_per_second"] for r in res["raw"][name] if r["layout"] == lay}
            print(f"| {name} | {lay} | " + " | ".join(f"{v[b]:,.0f}" for b in BATCHES) + " |")
        v32 = {r["batch"]: r["images_per_second"] for r in res["raw"]["fp32"] if r["layout"] == lay}
        v8 = {r["batch"]: r["images_per_second"] for r in res["raw"]["int8"] if r["layout"] == lay}
        print(f"| int8 / fp32 | {lay} | " + " | ".join(f"{v8[b] / v32[b]:.2f}×" for b in BATCHES) + " |")
    best = {n: max(r["images_per_second"] for r in res["raw"][n]) for n in models}
    print(f"\nbest of the sweep: fp32 {best['fp32']:,.0f} img/s, int8 {best['int8']:,.0f} img/s "
          f"({best['int8'] / best['fp32']:.2f}×)")

    # Server: throughput, then open-loop latency at the same absolute rate
    # (half the fp32 server's peak) and at half the model's own peak.
    runs = [("stream, 2 streams × window 64", ["--mode", "stream", "--concurrency", "2", "--window", "64"]),
            ("unary, concurrency 64", ["--concurrency", "64"])]
    fp32_peak = None
    for name, path in models.items():
        srv = Server(path)
        r = {"startup_ms": srv.startup_ms, "throughput": {}, "open_loop": {}}
        for label, args in runs:
            r["throughput"][label] = client(srv, "--duration", a.duration, *args)
        peak = max(x["throughput"] for x in r["throughput"].values())
        fp32_peak = fp32_peak or peak
        rates = {f"{fp32_peak * 0.5:,.0f}/s (50% of fp32 peak)": fp32_peak * 0.5}
        if name != "fp32":
            rates[f"{peak * 0.5:,.0f}/s (50% of int8 peak)"] = peak * 0.5
        for label, rps in rates.items():
            reps = [client(srv, "--rps", f"{rps:.0f}", "--concurrency", "512", "--duration", a.duration)
                    for _ in range(3)]
            reps.sort(key=lambda x: x["latency"]["p99_us"])
            r["open_loop"][label] = {"median_p99_run": reps[1], "runs": reps}
        srv.stop()
        res["server"][name] = r
    print("\n### Server, default flags\n")
    print("| load | fp32 req/s | int8 req/s | int8 / fp32 | fp32 p50 / p99 ms | int8 p50 / p99 ms |")
    print("|---|---|---|---|---|---|")
    for label, _ in runs:
        f, i = res["server"]["fp32"]["throughput"][label], res["server"]["int8"]["throughput"][label]
        print(f"| {label} | {f['throughput']:,.0f} | {i['throughput']:,.0f} | {i['throughput'] / f['throughput']:.2f}× | "
              f"{f['latency']['p50_us'] / 1000:.2f} / {f['latency']['p99_us'] / 1000:.2f} | "
              f"{i['latency']['p50_us'] / 1000:.2f} / {i['latency']['p99_us'] / 1000:.2f} |")
    print("\n### Open-loop latency (unary, scheduled arrivals; 3 runs each, median-p99 run shown)\n")
    print("| model | load | req/s | p50 ms | p90 ms | p99 ms | p99 range ms | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for name in models:
        for label, o in res["server"][name]["open_loop"].items():
            r, reps = o["median_p99_run"], o["runs"]
            l = r["latency"]
            errs = sum(sum(x["errors"].values()) for x in reps)
            print(f"| {name} | {label} | {r['throughput']:,.0f} | {l['p50_us'] / 1000:.2f} | {l['p90_us'] / 1000:.2f} | "
                  f"{l['p99_us'] / 1000:.2f} | {reps[0]['latency']['p99_us'] / 1000:.2f}–{reps[2]['latency']['p99_us'] / 1000:.2f} | {errs} |")
    res["machine"]["loadavg_end"] = loadavg()
    print(f"\nload average at the end {loadavg()}; start-up fp32 {res['server']['fp32']['startup_ms']} ms, "
          f"int8 {res['server']['int8']['startup_ms']} ms")
    with open(os.path.join(a.out, "results.json"), "w") as fh:
        json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
