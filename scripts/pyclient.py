#!/usr/bin/env python3
"""A closed-loop load generator written with a client the project did not
write: Python grpcio's asyncio API (grpc.aio), N calls in flight at once
over one channel (one HTTP/2 connection), each coroutine sending its next
call as soon as its last one answers.

  --rpc classify    mnister.v1.DigitClassifier/Classify with the `mnist`
                    input (784 raw bytes); stubs generated at run time from
                    proto/mnister/v1/classifier.proto with grpcio-tools into
                    a temporary folder.
  --rpc modelinfer  KServe inference.GRPCInferenceService/ModelInfer with
                    tritonclient's own generated stubs: one UINT8 [1,28,28]
                    input named `image` in raw_input_contents, model `mnist`,
                    all outputs (as tritonclient.infer asks by default).

Images cycle through the MNIST test set; every answer's digit is checked
against its label. Prints one JSON object:
  rpc, concurrency, seconds (measured wall time), requests (answered calls
  that completed inside the measured window), errors (by gRPC status code
  name, same window), throughput (answered calls per second), p50_ms,
  p90_ms, p99_ms, max_ms, mean_ms (each call timed with time.perf_counter_ns
  around the await alone: building the request and checking the answer are
  outside it, and no call waits in a client-side queue), client_cpu_cores
  (getrusage(RUSAGE_SELF) user+sys over the window / wall time; it includes
  grpcio's own threads), correct and accuracy.

Needs grpcio, grpcio-tools and tritonclient[grpc]: see
scripts/bench-requirements.txt (scripts/bench.py makes .venv-bench from it).

Usage: pyclient.py --addr 127.0.0.1:50051 --rpc classify --concurrency 16
                   [--duration 8] [--warmup 2] [--data-dir tests/data/mnist]
"""
import argparse, asyncio, collections, gzip, importlib, itertools, json, math, os, resource, shutil, struct, subprocess, sys, \
    tempfile, time

import grpc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO_ROOT = os.path.join(ROOT, "proto")
CALL_TIMEOUT_S = 30


def idx(path):
    """An IDX file (gzipped or not): a list of 784-byte images, or a list of labels."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    magic, n = struct.unpack(">II", raw[:8])
    if magic == 0x803:
        rows, cols = struct.unpack(">II", raw[8:16])
        size = rows * cols
        if size != 784:
            raise SystemExit(f"{path}: {rows}x{cols} images, want 28x28")
        return [raw[16 + i * size:16 + (i + 1) * size] for i in range(n)]
    if magic == 0x801:
        return list(raw[8:8 + n])
    raise SystemExit(f"{path}: not an IDX image or label file (magic {magic:#x})")


def find(data_dir, stem):
    for name in (stem + ".gz", stem):
        p = os.path.join(data_dir, name)
        if os.path.exists(p):
            return p
    raise SystemExit(f"{stem}[.gz] not found in {data_dir}")


def classify_stubs(tmp):
    """Generates the Python stubs for classifier.proto into tmp and imports them."""
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"--python_out={tmp}",
                    f"--grpc_python_out={tmp}", os.path.join(PROTO_ROOT, "mnister", "v1", "classifier.proto")],
                   check=True)
    sys.path.insert(0, tmp)
    pb2 = importlib.import_module("mnister.v1.classifier_pb2")
    pb2_grpc = importlib.import_module("mnister.v1.classifier_pb2_grpc")
    return pb2, pb2_grpc


def setup_classify(channel, images, tmp):
    pb2, pb2_grpc = classify_stubs(tmp)
    stub = pb2_grpc.DigitClassifierStub(channel)
    reqs = [pb2.ClassifyRequest(mnist=img) for img in images]
    return stub.Classify, reqs, lambda resp: resp.digit


def setup_modelinfer(channel, images, _tmp):
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    reqs = []
    for img in images:
        r = service_pb2.ModelInferRequest(model_name="mnist")
        t = r.inputs.add()
        t.name, t.datatype = "image", "UINT8"
        t.shape.extend([1, 28, 28])
        r.raw_input_contents.append(img)
        reqs.append(r)

    def digit(resp):
        for k, o in enumerate(resp.outputs):
            if o.name == "digit":
                if k < len(resp.raw_output_contents):
                    return int.from_bytes(resp.raw_output_contents[k][:8], "little", signed=True)
                return o.contents.int64_contents[0]
        return None

    return stub.ModelInfer, reqs, digit


class State:
    def __init__(self):
        self.phase = 0  # 0 warm-up, 1 measured, 2 stopping
        self.lat_ns = []
        self.errors = collections.Counter()
        self.correct = 0


async def worker(call, reqs, labels, digit, counter, st):
    n = len(reqs)
    perf = time.perf_counter_ns
    while st.phase < 2:
        i = next(counter) % n
        req = reqs[i]
        t0 = perf()
        try:
            resp = await call(req, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            if st.phase == 1:
                st.errors[e.code().name] += 1
            continue
        t1 = perf()
        if st.phase == 1:
            st.lat_ns.append(t1 - t0)
            if digit(resp) == labels[i]:
                st.correct += 1


def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def pct(sorted_ns, q):
    if not sorted_ns:
        return None
    k = min(len(sorted_ns) - 1, max(0, math.ceil(q * len(sorted_ns)) - 1))  # nearest rank
    return sorted_ns[k] / 1e6


async def run(a, images, labels, tmp):
    addr = a.addr.split("://", 1)[-1]
    async with grpc.aio.insecure_channel(addr) as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), 15)
        except asyncio.TimeoutError:
            raise SystemExit(f"no connection to {addr} within 15 s")
        setup = setup_classify if a.rpc == "classify" else setup_modelinfer
        call, reqs, digit = setup(channel, images, tmp)
        st = State()
        counter = itertools.count()
        tasks = [asyncio.create_task(worker(call, reqs, labels, digit, counter, st)) for _ in range(a.concurrency)]
        await asyncio.sleep(a.warmup)
        c0, w0 = cpu_s(), time.perf_counter()
        st.phase = 1
        await asyncio.sleep(a.duration)
        st.phase = 2
        c1, w1 = cpu_s(), time.perf_counter()
        await asyncio.gather(*tasks)
    wall = w1 - w0
    lat = sorted(st.lat_ns)
    n = len(lat)
    return {
        "client": f"Python grpcio {grpc.__version__} (grpc.aio)",
        "rpc": a.rpc,
        "concurrency": a.concurrency,
        "seconds": round(wall, 3),
        "requests": n,
        "errors": dict(st.errors),
        "throughput": n / wall,
        "p50_ms": pct(lat, 0.50),
        "p90_ms": pct(lat, 0.90),
        "p99_ms": pct(lat, 0.99),
        "max_ms": lat[-1] / 1e6 if lat else None,
        "mean_ms": sum(lat) / n / 1e6 if n else None,
        "client_cpu_cores": (c1 - c0) / wall,
        "correct": st.correct,
        "accuracy": st.correct / n if n else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--addr", required=True, help="HOST:PORT of the gRPC server (an http:// prefix is dropped)")
    ap.add_argument("--rpc", choices=["classify", "modelinfer"], required=True)
    ap.add_argument("--concurrency", type=int, default=1, help="calls in flight at once (closed loop)")
    ap.add_argument("--duration", type=float, default=8.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    ap.add_argument("--data-dir", default=os.path.join(ROOT, "tests", "data", "mnist"),
                    help="folder with t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]")
    a = ap.parse_args()
    if a.concurrency < 1 or a.duration <= 0 or a.warmup < 0:
        ap.error("--concurrency must be >= 1, --duration > 0, --warmup >= 0")
    images = idx(find(a.data_dir, "t10k-images-idx3-ubyte"))
    labels = idx(find(a.data_dir, "t10k-labels-idx1-ubyte"))
    if len(images) != len(labels) or not images:
        raise SystemExit(f"{len(images)} images but {len(labels)} labels in {a.data_dir}")
    tmp = tempfile.mkdtemp(prefix="mnister-pyclient-")
    try:
        out = asyncio.run(run(a, images, labels, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
