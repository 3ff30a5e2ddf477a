"""Writes the committed seed corpus: one small digit in every accepted
format, raw pixel buffers, and wire-encoded ClassifyRequest and KServe
ModelInferRequest messages. Run once with Pillow installed; the seeds are
committed, so fuzzing needs no Python."""
import gzip, io, os, struct
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def mnist(i):
    with gzip.open(os.path.join(ROOT, "tests/data/mnist/t10k-images-idx3-ubyte.gz")) as f:
        data = f.read()
    return data[16 + 784 * i: 16 + 784 * (i + 1)]


def put(target, name, data):
    with open(os.path.join(HERE, "corpus", target, "seed-" + name), "wb") as f:
        f.write(data)


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(num, wire, payload):
    key = varint(num << 3 | wire)
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + payload


digit = mnist(0)
canvas = Image.frombytes("L", (28, 28), bytes(255 - b for b in digit)).resize((84, 84))
encoded = {}
for fmt, ext, kw in [("PNG", "png", {}), ("JPEG", "jpg", {"quality": 80}), ("BMP", "bmp", {}),
                     ("GIF", "gif", {}), ("WEBP", "webp", {"quality": 80}), ("PPM", "pgm", {})]:
    buf = io.BytesIO()
    canvas.save(buf, fmt, **kw)
    encoded[ext] = buf.getvalue()
    put("decode_image", ext, encoded[ext])
rgba = io.BytesIO()
canvas.convert("RGBA").save(rgba, "PNG")
put("decode_image", "rgba.png", rgba.getvalue())

# raw_pixels takes arbitrary's layout: width u64, height u64, then the bytes.
for name, (w, h, px) in {"mnist": (28, 28, digit), "canvas": (84, 84, canvas.tobytes()),
                         "short": (10, 10, b"\x00" * 50)}.items():
    put("raw_pixels", name, struct.pack("<QQ", w, h) + px)

put("classify_request", "image-png", field(1, 2, b"a") + field(2, 2, encoded["png"]))
put("classify_request", "image-jpg", field(2, 2, encoded["jpg"]))
put("classify_request", "mnist", field(1, 2, b"m") + field(4, 2, digit) + field(5, 0, b"\x01"))
pix = field(1, 0, varint(84)) + field(2, 0, varint(84)) + field(3, 2, canvas.tobytes())
put("classify_request", "pixels", field(3, 2, pix))
put("classify_request", "empty", b"")


def tensor(name, dtype, shape, contents=b""):
    t = field(1, 2, name) + field(2, 2, dtype)
    t += field(3, 2, b"".join(varint(s) for s in shape))
    if contents:
        t += field(5, 2, contents)
    return t


req = lambda t, raw=None: field(1, 2, b"mnist") + field(5, 2, t) + (field(7, 2, raw) if raw else b"")
put("kserve_request", "uint8-raw", req(tensor(b"image", b"UINT8", [1, 28, 28]), digit))
put("kserve_request", "fp32-raw", req(tensor(b"image", b"FP32", [1, 1, 28, 28]),
                                      b"".join(struct.pack("<f", b / 255) for b in digit)))
uint_contents = field(4, 2, b"".join(varint(b) for b in digit))  # uint_contents = 4
put("kserve_request", "uint8-typed", req(tensor(b"image", b"UINT8", [1, 28, 28], uint_contents)))
bytes_contents = field(8, 2, encoded["png"]) + field(8, 2, encoded["jpg"])  # bytes_contents = 8
put("kserve_request", "bytes-typed", req(tensor(b"image", b"BYTES", [2], bytes_contents)))
raw_bytes = struct.pack("<I", len(encoded["png"])) + encoded["png"]
put("kserve_request", "bytes-raw", req(tensor(b"image", b"BYTES", [1]), raw_bytes))
print("seeds written")
