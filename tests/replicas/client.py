#!/usr/bin/env python3
"""The client side of the replica tests (tests/it/replicas.rs): Python
grpcio, a client the project did not write, calling
mnister.v1.DigitClassifier/Classify over one channel.

  --target T        a gRPC target: "ipv4:127.0.0.1:1,127.0.0.1:2,..." for
                    client-side balancing over fixed addresses, or one
                    proxy's address
  --round-robin     the round_robin policy (grpc's default is pick_first)
                    with client-side health checking, as docs/operations.md
                    tells users
  --retry           the retry policy of docs/operations.md: UNAVAILABLE is
                    retried, up to 5 attempts, with backoff
  --calls N         N calls one after another, then exit; or
  --seconds S       calls for S seconds, or until a file --stop-file exists
  --concurrency C   calls in flight at once (threads), default 1

Every call has a 5 s deadline. Prints one JSON line:
  {"ok": n, "failed": {"CODE": n, ...}, "first_errors": [...], "seconds": s}
"""
import argparse, json, os, sys, threading, time

import grpc
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The service config users are told to copy (docs/operations.md, "When one
# machine is not enough"); the tests use it as written there.
RETRY_POLICY = {
    "name": [{"service": "mnister.v1.DigitClassifier"}],
    "retryPolicy": {
        "maxAttempts": 5,
        "initialBackoff": "0.05s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    },
}


def stubs(out):
    """Generates the Python stubs from proto/ (grpcio-tools) into `out`."""
    rc = protoc.main(["protoc", "-I", os.path.join(ROOT, "proto"), f"--python_out={out}",
                      f"--grpc_python_out={out}", os.path.join(ROOT, "proto/mnister/v1/classifier.proto")])
    if rc != 0:
        sys.exit(f"grpc_tools.protoc failed with {rc}")
    sys.path.insert(0, out)
    from mnister.v1 import classifier_pb2, classifier_pb2_grpc
    return classifier_pb2, classifier_pb2_grpc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--round-robin", action="store_true")
    ap.add_argument("--retry", action="store_true")
    ap.add_argument("--calls", type=int)
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--stop-file")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--stubs", required=True, help="folder for the generated stubs")
    a = ap.parse_args()
    pb, pb_grpc = stubs(a.stubs)

    config = {}
    if a.round_robin:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
        # Client-side health checking (grpc.health.v1 Watch): a replica that
        # is starting or draining is skipped until it is SERVING.
        config["healthCheckConfig"] = {"serviceName": "mnister.v1.DigitClassifier"}
    if a.retry:
        config["methodConfig"] = [RETRY_POLICY]
    options = [("grpc.service_config", json.dumps(config))] if config else []
    if a.target.startswith("ipv4:") and "," in a.target:
        # grpcio sends a static address list as the :authority, which is not
        # a valid authority (RFC 3986) and HTTP/2 servers (hyper's h2, grpc-go)
        # reset the stream: name the service instead.
        options.append(("grpc.default_authority", "mnister"))
    channel = grpc.insecure_channel(a.target, options=options)
    grpc.channel_ready_future(channel).result(timeout=10)
    stub = pb_grpc.DigitClassifierStub(channel)
    image = bytes(range(256)) * 3 + bytes(16)  # 784 bytes: any MNIST-form input will do
    req = pb.ClassifyRequest(id="x", mnist=image)

    lock = threading.Lock()
    ok, failed, first_errors = [0], {}, []
    started = time.monotonic()
    calls_left = [a.calls if a.calls is not None else -1]

    def more():
        with lock:
            if calls_left[0] == 0:
                return False
            if calls_left[0] > 0:
                calls_left[0] -= 1
        if a.seconds is not None and time.monotonic() - started >= a.seconds:
            return False
        if a.stop_file and os.path.exists(a.stop_file):
            return False
        return True

    def worker():
        while more():
            try:
                stub.Classify(req, timeout=5)
                with lock:
                    ok[0] += 1
            except grpc.RpcError as e:
                with lock:
                    name = e.code().name
                    failed[name] = failed.get(name, 0) + 1
                    if len(first_errors) < 5:
                        first_errors.append(f"{name}: {e.details()}")

    threads = [threading.Thread(target=worker) for _ in range(a.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"ok": ok[0], "failed": failed, "first_errors": first_errors,
                      "seconds": round(time.monotonic() - started, 3)}), flush=True)


if __name__ == "__main__":
    main()
