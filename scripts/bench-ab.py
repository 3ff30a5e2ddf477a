#!/usr/bin/env python3
"""A/B two servers (binaries or flag sets) in alternating rounds, the same
hour, a fresh server each time: the Python grpc.aio client on Classify at
16 in flight (throughput, p50, p99, mean batch, share of one-image batches
from /metrics), then the project's Rust client on a stream (2 x window 64),
unary c64 and unary c1.

Usage: scripts/bench-ab.py [--rounds 4]
         [--a NAME=BINARY[,FLAG...]] [--b NAME=BINARY[,FLAG...]]
e.g.   scripts/bench-ab.py --a old=/tmp/mnister-server.old \\
                           --b new=target/release/mnister-server
       scripts/bench-ab.py --a cap16=target/release/mnister-server \\
                           --b cap4=target/release/mnister-server,--max-batch-size,4
Run it on an otherwise idle machine; numbers in docs/benchmarks.md.
"""
import argparse, json, os, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def side(spec):
    name, _, rest = spec.partition("=")
    binary, *flags = rest.split(",")
    return name, os.path.abspath(binary), flags


def batches(m):
    n = m.get("mnister_batch_size_count", 0)
    ones = next((v for k, v in m.items() if k.startswith("mnister_batch_size_bucket") and 'le="1"' in k), 0)
    return m.get("mnister_batch_size_sum", 0), n, ones


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--a", default=f"a={bench.REL}/mnister-server")
    ap.add_argument("--b", default=f"b={bench.REL}/mnister-server,--max-batch-size,4")
    ap.add_argument("--json", help="also write every row here")
    a = ap.parse_args()
    py = bench.bench_python()
    rows = []
    print("| round | server | py c16 req/s | p50 ms | p99 ms | mean batch | one-image batches | stream req/s | c64 req/s | c64 p99 ms | c1 req/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for rnd in range(1, a.rounds + 1):
        for name, binary, flags in (side(a.a), side(a.b)):
            os.environ["MNISTER_BENCH_SERVER"] = binary
            srv = bench.Server(flags)
            try:
                m0 = bench.scrape(srv)
                py16 = bench.pyclient(py, srv, "classify", 16, 8, 2)
                m1 = bench.scrape(srv)
                st = bench.client(srv, "--duration", "5s", "--mode", "stream", "--concurrency", "2", "--window", "64")
                c64 = bench.client(srv, "--duration", "5s", "--concurrency", "64")
                c1 = bench.client(srv, "--duration", "4s", "--concurrency", "1")
            finally:
                srv.stop()
            (s0, n0, o0), (s1, n1, o1) = batches(m0), batches(m1)
            r = {"round": rnd, "server": name, "binary": binary, "flags": flags, "py_c16": py16,
                 "mean_batch": (s1 - s0) / max(n1 - n0, 1), "one_image_share": (o1 - o0) / max(n1 - n0, 1),
                 "stream": st, "c64": c64, "c1": c1}
            rows.append(r)
            print(f"| {rnd} | {name} | {py16['throughput']:,.0f} | {py16['p50_ms']:.2f} | {py16['p99_ms']:.2f} | "
                  f"{r['mean_batch']:.2f} | {r['one_image_share']:.0%} | {st['throughput']:,.0f} | "
                  f"{c64['throughput']:,.0f} | {c64['latency']['p99_us'] / 1000:.2f} | {c1['throughput']:,.0f} |",
                  flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
