#!/usr/bin/python3
"""Generate torchvision/PIL reference fixtures for graft's image decoders and transforms.

Run from the repository root with the system Python that has torch/torchvision/PIL:

    /usr/bin/python3 tests/parity/gen_transform_fixtures.py

Outputs, under tests/parity/fixtures/transforms/ (committed, so CI never needs Python):

  transforms.safetensors   random uint8 input images and what torchvision 0.14 makes of
                           them (all tensors F32; images hold their uint8 values exactly):
                             input.NAME      [H, W, C]   an input image (C = 1 is mode "L")
                             expected.CASE   [C, H, W]   Compose(...)(input) as a tensor
                             crop.CASE       [C, H, W]   ToTensor(crop(pad(input, P), i, j, h, w))
                           __metadata__:
                             case.CASE = "INPUT|SPEC"    SPEC in graft's transform syntax; the
                                                         Compose is built from it below
                             crop.CASE = "INPUT|TOP|LEFT|HEIGHT|WIDTH"  TOP = i - P, LEFT = j - P:
                                                         the window in the unpadded input
  images/FILE.{png,jpg,bmp}  small images written by PIL (or by hand below, for the layouts
                           PIL cannot write: 16-bit colour, 2/4-bit, Adam7, BMP variants)
  images/expected.safetensors  FILE -> [H, W, 3] F32: Image.open(FILE).convert("RGB")
  MANIFEST.tsv             path<TAB>size<TAB>sha256 of every file above

Deterministic (fixed seeds); every file is re-read and checked after writing.  The
script also checks, over all 2^24 colours, that PIL's convert("L") is the fixed-point
formula graft implements.
"""

import hashlib
import io
import json
import os
import struct
import sys
import zlib

import numpy as np
import torch
import torchvision
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image

ROOT = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(ROOT, "fixtures", "transforms")
IMG = os.path.join(OUT, "images")
MAX_TOTAL = 1024 * 1024

IMAGENET_MEAN = [0.485, 0.456, 0.406]  # torchvision's ImageNet weights transforms
IMAGENET_STD = [0.229, 0.224, 0.225]

written = []


# --------------------------------------------------------------------------
# safetensors (tiny writer/reader, no dependency on the safetensors package)

def st_write(path, tensors, metadata=None):
    """tensors: list of (name, np.ndarray float32)."""
    header, blobs, off = {}, [], 0
    for name, a in tensors:
        data = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape),
                        "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    if metadata:
        header["__metadata__"] = metadata
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((-len(hj)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)
    written.append(path)


def st_read(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    out = {}
    for name, e in header.items():
        b, en = e["data_offsets"]
        out[name] = np.frombuffer(data[b:en], dtype="<f4").reshape(e["shape"])
    return out, meta


# --------------------------------------------------------------------------
# graft transform specs -> torchvision Compose (the syntax of src/data/transforms.h)

def parse_size(v):
    if "x" in v:
        h, w = v.split("x")
        return (int(h), int(w))
    return int(v)


def compose_from_spec(spec):
    ts, tail = [], []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        name, _, value = item.partition("=")
        if name == "resize":
            ts.append(T.Resize(parse_size(value)))
        elif name == "centercrop":
            ts.append(T.CenterCrop(parse_size(value)))
        elif name == "hflip":
            ts.append(T.RandomHorizontalFlip(float(value) if value else 0.5))
        elif name == "grayscale":
            ts.append(T.Grayscale(int(value) if value else 1))
        elif name == "totensor":
            pass
        elif name == "normalize":
            if value == "imagenet":
                mean, std = IMAGENET_MEAN, IMAGENET_STD
            else:
                m, s = value.split("/")
                mean = [float(x) for x in m.split(":")]
                std = [float(x) for x in s.split(":")]
            tail.append(T.Normalize(mean, std))
        else:
            raise ValueError("no deterministic torchvision equivalent for " + item)
    return T.Compose(ts + [T.ToTensor()] + tail)


def to_pil(a):
    return Image.fromarray(a[:, :, 0], "L") if a.shape[2] == 1 else Image.fromarray(a, "RGB")


# --------------------------------------------------------------------------
# transforms

INPUT_SHAPES = {  # name -> (H, W, C); odd sizes on purpose
    "a": (17, 23, 3),
    "b": (32, 32, 3),
    "c": (48, 64, 3),
    "d": (9, 14, 1),
    "e": (3, 5, 3),
    "f": (64, 40, 3),
}

CASES = [  # (case name, input, graft spec)
    ("totensor_a", "a", ""),
    ("totensor_d", "d", "totensor"),
    ("totensor_e", "e", ""),
    ("normalize_imagenet_a", "a", "normalize=imagenet"),
    ("normalize_imagenet_c", "c", "totensor,normalize=imagenet"),
    ("normalize_one_value_d", "d", "normalize=0.1307/0.3081"),
    ("normalize_one_value_rgb_b", "b", "normalize=0.5/0.25"),
    ("normalize_three_values_c", "c", "normalize=0.1:0.2:0.3/0.9:0.8:0.7"),
    ("resize_down_int_c", "c", "resize=8"),
    ("resize_down_int_a", "a", "resize=13"),
    ("resize_down_int_b", "b", "resize=20"),
    ("resize_down_tuple_a", "a", "resize=5x7"),
    ("resize_down_far_f", "f", "resize=5x3"),
    ("resize_down_int_gray_d", "d", "resize=4"),
    ("resize_up_int_a", "a", "resize=40"),
    ("resize_up_tuple_b", "b", "resize=50x37"),
    ("resize_up_int_gray_d", "d", "resize=30"),
    ("resize_up_int_e", "e", "resize=11"),
    ("resize_mixed_c", "c", "resize=24x80"),
    ("resize_same_b", "b", "resize=32"),
    ("resize_tall_f", "f", "resize=24"),
    ("centercrop_a", "a", "centercrop=10"),
    ("centercrop_tuple_c", "c", "centercrop=9x16"),
    ("centercrop_odd_margin_a", "a", "centercrop=14x20"),
    ("centercrop_larger_a", "a", "centercrop=40"),
    ("centercrop_larger_odd_e", "e", "centercrop=6x10"),
    ("centercrop_larger_width_a", "a", "centercrop=12x30"),
    ("centercrop_gray_d", "d", "centercrop=5"),
    ("grayscale_a", "a", "grayscale"),
    ("grayscale1_c", "c", "grayscale=1"),
    ("grayscale3_a", "a", "grayscale=3"),
    ("grayscale3_gray_d", "d", "grayscale=3"),
    ("hflip_a", "a", "hflip=1"),
    ("hflip_gray_d", "d", "hflip=1.0"),
    ("hflip_never_b", "b", "hflip=0"),
    ("compose_imagenet_c", "c", "resize=20,centercrop=16,grayscale=3,normalize=imagenet"),
    ("compose_flip_a", "a", " resize=36 , centercrop=32, hflip=1, totensor, normalize=imagenet"),
    ("compose_gray_mnist_d", "d", "resize=32,grayscale=3,normalize=0.1307/0.3081"),
]

CROPS = [  # (case name, input, padding P, i, j, h, w) as RandomCrop(size, padding=P) would draw
    ("pad2_origin_a", "a", 2, 0, 0, 8, 8),
    ("pad2_far_corner_a", "a", 2, 17 + 4 - 8, 23 + 4 - 8, 8, 8),
    ("pad4_mid_b", "b", 4, 3, 5, 32, 32),
    ("pad4_corner_b", "b", 4, 8, 0, 32, 32),
    ("pad0_inside_c", "c", 0, 7, 11, 20, 30),
    ("pad3_gray_d", "d", 3, 1, 2, 12, 12),
    ("pad1_rect_e", "e", 1, 0, 1, 4, 6),
]


def gen_transforms():
    rng = np.random.default_rng(20240601)
    inputs = {n: rng.integers(0, 256, s, dtype=np.uint8) for n, s in INPUT_SHAPES.items()}
    tensors = [("input." + n, a.astype(np.float32)) for n, a in inputs.items()]
    meta = {}
    for name, inp, spec in CASES:
        out = compose_from_spec(spec)(to_pil(inputs[inp]))
        tensors.append(("expected." + name, out.numpy().astype(np.float32)))
        meta["case." + name] = "%s|%s" % (inp, spec)
    for name, inp, p, i, j, h, w in CROPS:
        img = to_pil(inputs[inp])
        out = F.to_tensor(F.crop(F.pad(img, p), i, j, h, w))
        # RandomCrop draws i, j in these ranges; the fixture must be one of its outputs.
        assert 0 <= i <= img.height + 2 * p - h and 0 <= j <= img.width + 2 * p - w
        tensors.append(("crop." + name, out.numpy().astype(np.float32)))
        meta["crop." + name] = "%s|%d|%d|%d|%d" % (inp, i - p, j - p, h, w)
    path = os.path.join(OUT, "transforms.safetensors")
    st_write(path, tensors, meta)
    back, bmeta = st_read(path)
    assert bmeta == meta
    for n, a in tensors:
        assert np.array_equal(back[n], a), n
    return len(CASES), len(CROPS)


def check_grayscale_formula():
    """PIL convert("L") == (R*19595 + G*38470 + B*7471 + 0x8000) >> 16 for every colour."""
    v = np.arange(1 << 24, dtype=np.uint32)
    rgb = np.stack([(v >> 16) & 255, (v >> 8) & 255, v & 255], axis=-1).astype(np.uint8)
    img = Image.fromarray(rgb.reshape(4096, 4096, 3), "RGB")
    pil = np.asarray(img.convert("L")).reshape(-1).astype(np.uint32)
    r, g, b = [rgb[:, k].astype(np.uint32) for k in range(3)]
    assert np.array_equal(pil, (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16)


# --------------------------------------------------------------------------
# images

def png_chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_bytes(rows, w, h, depth, ctype, extra=b"", interlace=0):
    """rows: the raw (unfiltered) scanlines, already in pass order when interlaced."""
    ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, interlace)
    raw = b"".join(b"\x00" + r for r in rows)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + extra +
            png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b""))


def pack_bits(row, depth):
    """Packs samples of depth 1, 2 or 4 bits, most significant first, into bytes."""
    per = 8 // depth
    row = list(row) + [0] * ((-len(row)) % per)
    out = bytearray()
    for k in range(0, len(row), per):
        b = 0
        for s in row[k:k + per]:
            b = (b << depth) | int(s)
        out.append(b)
    return bytes(out)


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2)]  # (x0, y0, dx, dy) of the seven passes


def adam7_rows(a):
    rows = []
    for x0, y0, dx, dy in ADAM7:
        sub = a[y0::dy, x0::dx]
        if sub.shape[0] and sub.shape[1]:
            rows += [r.tobytes() for r in sub]
    return rows


def bmp_bytes(w, h, bits, rows_top_down, palette=b"", header=40, compression=0, masks=None,
              top_down=False, colors_used=0):
    """A BMP with the given scanlines (unpadded bytes, top row first)."""
    stride = ((w * bits + 31) // 32) * 4
    order = rows_top_down if top_down else rows_top_down[::-1]
    pixels = b"".join(r + b"\x00" * (stride - len(r)) for r in order)
    if header == 12:
        info = struct.pack("<IHHHH", 12, w, h, 1, bits)
    else:
        info = struct.pack("<IiiHHIIiiII", header, w, -h if top_down else h, 1, bits,
                           compression, len(pixels), 2835, 2835, colors_used, 0)
        if header >= 52:
            info += struct.pack("<III", *(masks[:3] if masks else (0, 0, 0)))
        if header >= 56:
            info += struct.pack("<I", masks[3] if masks and len(masks) > 3 else 0)
        if header == 124:
            info += struct.pack("<I", 0x73524742) + b"\x00" * 36 + b"\x00" * 12
            info += struct.pack("<IIII", 4, 0, 0, 0)
        assert len(info) == header, (len(info), header)
    offset = 14 + len(info) + len(palette)
    head = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    return head + info + palette + pixels


def gen_images():
    rng = np.random.default_rng(7)
    W, H = 13, 9  # odd on purpose: row padding, chroma subsampling edges
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (H, W), dtype=np.uint8)
    alpha = rng.integers(0, 256, (H, W), dtype=np.uint8)
    # smooth content too, where JPEG is closer to its input
    yy, xx = np.mgrid[0:H * 3, 0:W * 3]
    smooth = np.stack([xx * 6, yy * 9, (xx + yy) * 3], -1).clip(0, 255).astype(np.uint8)
    files = {}

    def pil_save(name, img, **kw):
        b = io.BytesIO()
        img.save(b, **kw)
        files[name] = b.getvalue()

    # PNG, written by PIL
    pil_save("rgb.png", Image.fromarray(rgb, "RGB"), format="PNG")
    pil_save("gray.png", Image.fromarray(gray, "L"), format="PNG")
    pil_save("la.png", Image.fromarray(np.dstack([gray, alpha]), "LA"), format="PNG")
    pil_save("rgba.png", Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), format="PNG")
    pal = Image.fromarray((gray % 40).astype(np.uint8), "P")
    pal.putpalette(rng.integers(0, 256, 40 * 3, dtype=np.uint8).tobytes())
    pil_save("palette.png", pal, format="PNG")
    pal_t = pal.copy()
    pal_t.info["transparency"] = 3
    pil_save("palette_trns.png", pal_t, format="PNG", transparency=3)
    pil_save("bilevel.png", Image.fromarray(gray > 127), format="PNG")
    g16 = rng.integers(0, 1024, (H, W), dtype=np.uint16)  # many values above 255: PIL clips
    pil_save("gray16.png", Image.fromarray(g16, "I;16"), format="PNG")

    # PNG, written by hand (layouts PIL does not write)
    rgb16 = rng.integers(0, 65536, (H, W, 3), dtype=np.uint16)
    files["rgb16.png"] = png_bytes([r.astype(">u2").tobytes() for r in rgb16], W, H, 16, 2)
    rgba16 = rng.integers(0, 65536, (H, W, 4), dtype=np.uint16)
    files["rgba16.png"] = png_bytes([r.astype(">u2").tobytes() for r in rgba16], W, H, 16, 6)
    la16 = rng.integers(0, 65536, (H, W, 2), dtype=np.uint16)
    files["la16.png"] = png_bytes([r.astype(">u2").tobytes() for r in la16], W, H, 16, 4)
    for depth in (2, 4):
        g = rng.integers(0, 1 << depth, (H, W))
        files["gray%d.png" % depth] = png_bytes([pack_bits(r, depth) for r in g], W, H, depth, 0)
    idx = rng.integers(0, 16, (H, W))
    idx[0, :4] = [12, 13, 14, 15]  # beyond the 12-entry palette: PIL reads them as gray ramp
    plte = png_chunk(b"PLTE", rng.integers(0, 256, 12 * 3, dtype=np.uint8).tobytes())
    files["palette4_short.png"] = png_bytes([pack_bits(r, 4) for r in idx], W, H, 4, 3, plte)
    files["rgb_adam7.png"] = png_bytes(adam7_rows(rgb), W, H, 8, 2, interlace=1)
    files["rgb_no_iend.png"] = files["rgb.png"][:-12]  # PIL accepts a missing IEND

    # JPEG, written by PIL (libjpeg-turbo)
    pil_save("rgb.jpg", Image.fromarray(rgb, "RGB"), format="JPEG", quality=90)
    pil_save("smooth.jpg", Image.fromarray(smooth, "RGB"), format="JPEG", quality=75)
    pil_save("smooth444.jpg", Image.fromarray(smooth, "RGB"), format="JPEG", quality=95,
             subsampling=0)
    pil_save("smooth_progressive.jpg", Image.fromarray(smooth, "RGB"), format="JPEG",
             quality=80, progressive=True)
    pil_save("gray.jpg", Image.fromarray(gray, "L"), format="JPEG", quality=90)
    pil_save("cmyk.jpg", Image.fromarray(smooth, "RGB").convert("CMYK"), format="JPEG",
             quality=90)

    # BMP, written by PIL
    pil_save("rgb.bmp", Image.fromarray(rgb, "RGB"), format="BMP")
    pil_save("gray.bmp", Image.fromarray(gray, "L"), format="BMP")
    pil_save("palette.bmp", pal, format="BMP")
    pil_save("bilevel.bmp", Image.fromarray(gray > 127), format="BMP")
    pil_save("rgba.bmp", Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), format="BMP")

    # BMP, written by hand
    bgr_rows = [r[:, ::-1].tobytes() for r in rgb]
    files["rgb_top_down.bmp"] = bmp_bytes(W, H, 24, bgr_rows, top_down=True)
    files["rgb_core_header.bmp"] = bmp_bytes(W, H, 24, bgr_rows, header=12)
    bgra_rows = [np.concatenate([r[:, ::-1], a[:, None]], axis=1).tobytes() for r, a in zip(rgb, alpha)]
    files["bgra_v5_bitfields.bmp"] = bmp_bytes(
        W, H, 32, bgra_rows, header=124, compression=3,
        masks=(0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000))
    pal16 = rng.integers(0, 256, (16, 4), dtype=np.uint8)
    pal16[:, 3] = 0
    idx4 = rng.integers(0, 16, (H, W))
    files["palette4.bmp"] = bmp_bytes(W, H, 4, [pack_bits(r, 4) for r in idx4],
                                      palette=pal16.tobytes(), colors_used=16)

    os.makedirs(IMG, exist_ok=True)
    expected = []
    for name in sorted(files):
        p = os.path.join(IMG, name)
        with open(p, "wb") as f:
            f.write(files[name])
        written.append(p)
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB"))
        assert a.shape[2] == 3 and a.dtype == np.uint8
        expected.append((name, a.astype(np.float32)))
    # The rules image.h states, checked on PIL itself:
    exp = dict(expected)
    assert np.array_equal(exp["rgb16.png"], (rgb16 >> 8).astype(np.float32))
    assert np.array_equal(exp["gray16.png"][..., 0], np.minimum(g16, 255).astype(np.float32))
    assert np.array_equal(exp["rgba.png"], rgb.astype(np.float32))  # alpha dropped, no blending
    assert np.array_equal(exp["rgb_adam7.png"], rgb.astype(np.float32))
    assert np.array_equal(exp["palette4_short.png"][0, 1], [13, 13, 13])
    path = os.path.join(IMG, "expected.safetensors")
    st_write(path, expected)
    back, _ = st_read(path)
    for n, a in expected:
        assert np.array_equal(back[n], a), n
    return len(files)


def write_manifest():
    lines = []
    for p in sorted(written):
        with open(p, "rb") as f:
            data = f.read()
        lines.append("%s\t%d\t%s" % (os.path.relpath(p, OUT), len(data),
                                     hashlib.sha256(data).hexdigest()))
    path = os.path.join(OUT, "MANIFEST.tsv")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return sum(os.path.getsize(p) for p in written) + os.path.getsize(path)


def main():
    print("torch %s, torchvision %s, PIL %s" % (torch.__version__, torchvision.__version__,
                                               Image.__version__))
    os.makedirs(OUT, exist_ok=True)
    check_grayscale_formula()
    ncases, ncrops = gen_transforms()
    nimages = gen_images()
    total = write_manifest()
    print("%d transform cases, %d crops, %d images; %d bytes in %s" %
          (ncases, ncrops, nimages, total, OUT))
    if total > MAX_TOTAL:
        sys.exit("fixtures exceed %d bytes" % MAX_TOTAL)


if __name__ == "__main__":
    main()
