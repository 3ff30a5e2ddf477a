#!/usr/bin/env python3
"""A minimal OTLP/gRPC trace receiver for scripts/bench.py's tracing
overhead rows: it accepts opentelemetry.proto.collector.trace.v1.
TraceService/Export and answers an empty ExportTraceServiceResponse,
without decoding the spans (the benchmark measures the server's cost of
exporting, not a collector's). It counts requests and bytes, and prints
them as JSON on SIGTERM.

Usage: otlp-sink.py --port 4317
"""
import argparse, json, signal, sys, threading
from concurrent import futures

import grpc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    stats = {"requests": 0, "bytes": 0}
    lock = threading.Lock()

    def export(request, context):
        with lock:
            stats["requests"] += 1
            stats["bytes"] += len(request)
        return b""  # an empty ExportTraceServiceResponse

    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)})  # raw bytes both ways
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{a.port}")
    server.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print("listening", flush=True)
    done.wait()
    server.stop(0)
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
