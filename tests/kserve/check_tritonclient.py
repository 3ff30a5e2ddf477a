"""Talks to mnister's KServe v2 endpoint with Triton's official Python
client (tritonclient[grpc] from PyPI), unchanged.

Usage: python check_tritonclient.py HOST:PORT MNIST_DIR
Exits non-zero with a message on the first failed check.
"""
import gzip
import queue
import struct
import sys
import zlib

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

url, data_dir = sys.argv[1], sys.argv[2]
client = grpcclient.InferenceServerClient(url=url)


def check(cond, what):
    if not cond:
        sys.exit(f"FAIL {what}")
    print(f"ok  {what}")


def idx(name):
    raw = gzip.open(f"{data_dir}/{name}").read()
    if raw[:4] == b"\x00\x00\x08\x03":
        n = struct.unpack(">I", raw[4:8])[0]
        return np.frombuffer(raw[16:], dtype=np.uint8).reshape(n, 28, 28)
    return np.frombuffer(raw[8:], dtype=np.uint8)


images = idx("t10k-images-idx3-ubyte.gz")[:64]
labels = idx("t10k-labels-idx1-ubyte.gz")[:64].astype(np.int64)


def png(img):
    """A minimal grayscale PNG, so the test needs nothing but numpy."""
    h, w = img.shape
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


check(client.is_server_live(), "is_server_live")
check(client.is_server_ready(), "is_server_ready")
check(client.is_model_ready("mnist"), "is_model_ready('mnist')")
check(not client.is_model_ready("no-such-model"), "is_model_ready is false for an unknown model")

meta = client.get_model_metadata("mnist", as_json=True)
forms = {(i["datatype"], tuple(int(s) for s in i["shape"])) for i in meta["inputs"]}
check(forms == {("FP32", (-1, 1, 28, 28)), ("UINT8", (-1, 28, 28)), ("BYTES", (-1,))}, f"model metadata inputs {forms}")
outs = {o["name"]: (o["datatype"], tuple(int(s) for s in o["shape"])) for o in meta["outputs"]}
check(outs == {"probabilities": ("FP32", (-1, 10)), "digit": ("INT64", (-1,)), "abstained": ("BOOL", (-1,))},
      f"model metadata outputs {outs}")
config = client.get_model_config("mnist", as_json=True)["config"]
check(int(config["max_batch_size"]) > 0, f"model config max_batch_size {config['max_batch_size']}")
server = client.get_server_metadata(as_json=True)
check(server["name"] == "mnister", "server metadata")


def infer(inp, outputs=None):
    req_out = [grpcclient.InferRequestedOutput(n) for n in outputs] if outputs else None
    return client.infer("mnist", [inp], outputs=req_out, request_id="r1")


# FP32 [N,1,28,28]
x = grpcclient.InferInput("image", [64, 1, 28, 28], "FP32")
x.set_data_from_numpy((images.astype(np.float32) / 255.0).reshape(64, 1, 28, 28))
r = infer(x)
digits = r.as_numpy("digit")
probs = r.as_numpy("probabilities")
check(probs.shape == (64, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-3), "FP32: probabilities [64,10]")
check((digits == labels).mean() >= 0.98, f"FP32: {int((digits == labels).sum())}/64 digits right")
check(r.get_response().id == "r1", "request id echoed")

# UINT8 [N,28,28]
x = grpcclient.InferInput("image", [64, 28, 28], "UINT8")
x.set_data_from_numpy(images.copy())
r = infer(x, outputs=["digit"])
check(r.as_numpy("probabilities") is None, "requested outputs honoured (only digit)")
check((r.as_numpy("digit") == labels).mean() >= 0.98, "UINT8: digits right")

# BYTES [N]: encoded PNGs through the shared preprocessing (dark on light, upscaled).
pngs = np.array([png(np.kron(255 - images[i], np.ones((4, 4), dtype=np.uint8))) for i in range(16)], dtype=np.object_)
x = grpcclient.InferInput("image", [16], "BYTES")
x.set_data_from_numpy(pngs)
r = infer(x)
check((r.as_numpy("digit") == labels[:16]).mean() >= 0.9, f"BYTES: {int((r.as_numpy('digit') == labels[:16]).sum())}/16 PNG digits right")

# Streaming, 100 frames, answers in order.
results = queue.Queue()
client.start_stream(callback=lambda result, error: results.put((result, error)))
for i in range(100):
    x = grpcclient.InferInput("image", [1, 28, 28], "UINT8")
    x.set_data_from_numpy(images[i % 64][None].copy())
    client.async_stream_infer("mnist", [x], request_id=str(i))
got = [results.get(timeout=30) for _ in range(100)]
client.stop_stream()
errors = [e for _, e in got if e is not None]
check(not errors, f"stream: no errors ({errors[:1]})")
ids = [r.get_response().id for r, _ in got]
check(ids == [str(i) for i in range(100)], "stream: 100 answers, in order")
right = sum(int(r.as_numpy("digit")[0] == labels[i % 64]) for i, (r, _) in enumerate(got))
check(right >= 97, f"stream: {right}/100 right")


def expect_error(inp, needle, what):
    try:
        client.infer("mnist", [inp])
    except InferenceServerException as e:
        msg = e.message()
        check(needle in msg and "image" in msg, f"{what}: {msg}")
        return
    sys.exit(f"FAIL {what}: no error")


x = grpcclient.InferInput("image", [2, 28, 28], "FP32")
x.set_data_from_numpy(np.zeros((2, 28, 28), dtype=np.float32))
expect_error(x, "[N,1,28,28]", "wrong shape is refused")
x = grpcclient.InferInput("image", [2, 1, 28, 28], "FP32")
x.set_data_from_numpy(np.zeros((2, 1, 28, 28), dtype=np.float32))
x.set_shape([3, 1, 28, 28])  # the header now claims more data than is sent
expect_error(x, "9408 bytes", "wrong byte length is refused")
x = grpcclient.InferInput("image", [1, 28, 28], "INT32")
x.set_data_from_numpy(np.zeros((1, 28, 28), dtype=np.int32))
expect_error(x, "accepted", "wrong datatype is refused")
print("all tritonclient checks passed")
