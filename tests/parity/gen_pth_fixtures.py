#!/usr/bin/env python3
"""Generate the torch.save checkpoints that graft's .pth reader is tested against.

Run from the repository root with the system Python that has torch 1.13:

    /usr/bin/python3 tests/parity/gen_pth_fixtures.py

Writes tests/parity/fixtures/pth/ (rewritten from scratch; < 1 MB in all):

  Checkpoints graft must read, each with NAME.expected.safetensors (or a shared one)
  holding the state dict graft should return (float32 / int64, contiguous, in order):
    vgg_zip.pth            a small VGG-shaped state dict (conv+BN features, 3 Linear
                           classifier; BN num_batches_tracked is int64), zip format
    vgg_legacy.pth         the same, _use_new_zipfile_serialization=False
    vgg_zip_p4.pth         zip, pickle protocol 4 (FRAME, MEMOIZE, STACK_GLOBAL, ...)
    vgg_legacy_p4.pth      legacy, pickle protocol 4
    vgg_fp16.pth           floats saved as float16 (expected: .half().float())
    vgg_bf16.pth           floats saved as bfloat16 (expected: .bfloat16().float())
    vgg_f64.pth            float64 values not representable in float32 (expected .float())
    nested_state_dict.pth  {"state_dict": sd, "epoch": 3, "optimizer": {...}, "arch": ...}
    nested_model.pth       {"model": sd, "epoch": 5}
    dataparallel.pth       every key prefixed "module."
    weird_prefix.pth       the zip rewritten so its folder is "weird_name/"
    big_endian.pth         the zip with byteorder "big" and byte-swapped storages
    views.pth              views sharing one storage: offsets, non-contiguous and zero
                           strides, a transpose, 0-d and empty tensors
    views_legacy.pth       the same, legacy format
    ints.pth               int32/int16/int8/uint8/bool tensors (expected as int64)
    parameter.pth          values saved as nn.Parameter (_rebuild_parameter)
  Files graft must refuse (no expected file):
    hostile_posix_system.pth  zip whose data.pkl does GLOBAL posix.system + REDUCE
    hostile_builtins_eval.pth legacy stream whose object is builtins.eval via STACK_GLOBAL
    whole_module.pth          torch.save(nn.Linear(...)): names torch.nn.modules...Linear
    truncated.pth             the first half of vgg_zip.pth
    random.pth                random bytes
    legacy_bad_count.pth      a legacy storage whose element count claims 2**40 elements
    legacy_truncated.pth      a legacy file cut inside its storage data
    zip_short_storage.pth     a zip storage entry 4 bytes shorter than its storage
    zip_bomb.pth              a deflated 16 MiB storage entry in a ~20 KB file
    zip_missing_storage.pth   a zip without the entry of one storage
    expanded_view.pth         a 1-element storage viewed as 2**20 x 2**20 (stride 0): 4 TiB
    list_top.pth              a list of tensors, not a state dict
    mixed_top.pth             a top-level dict with a tensor and "epoch": 3
  MANIFEST.tsv              path<TAB>size<TAB>sha256 of every file above

The hostile pickles are written byte by byte and never unpickled.  Legacy files name
their storages after memory addresses, so their bytes differ from run to run; the
committed files are what the tests use.
"""
import collections
import hashlib
import io
import json
import os
import pickle
import random
import shutil
import struct
import sys
import zipfile

import torch
import torch.nn as nn
from torchvision.models.vgg import make_layers

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "pth")
MAX_TOTAL = 1 << 20


# ---- helpers ---------------------------------------------------------------------

def path(name):
    return os.path.join(OUT, name)


def write_bytes(name, data):
    with open(path(name), "wb") as f:
        f.write(data)


def read_bytes(name):
    with open(path(name), "rb") as f:
        return f.read()


def write_safetensors(name, items):
    """items: list of (name, tensor); float32 -> F32, int64 -> I64, written in order."""
    header, blobs, off = {}, [], 0
    for key, t in items:
        t = t.detach().contiguous()
        if t.dtype == torch.float32:
            dt = "F32"
        elif t.dtype == torch.int64:
            dt = "I64"
        else:
            raise ValueError("%s: %s" % (key, t.dtype))
        data = t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()
        header[key] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    write_bytes(name, struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_safetensors(name):
    import numpy as np
    data = read_bytes(name)
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + hlen])
    base = 8 + hlen
    out = collections.OrderedDict()
    for key, e in header.items():
        b, end = e["data_offsets"]
        dt = {"F32": np.float32, "I64": np.int64}[e["dtype"]]
        arr = np.frombuffer(data[base + b:base + end], dtype=dt).reshape(e["shape"])
        out[key] = torch.from_numpy(arr.copy())
    return out


def expected_of(sd):
    """What graft returns for a state dict: float types -> float32, ints -> int64."""
    out = []
    for k, v in sd.items():
        v = v.detach()
        out.append((k, v.float() if v.is_floating_point() else v.long()))
    return out


class RecordingUnpickler(pickle.Unpickler):
    """Reads our own (trusted) data.pkl only to learn each storage key's dtype."""

    def __init__(self, f):
        super().__init__(f)
        self.types = {}

    def find_class(self, module, name):
        if module == "torch" and name.endswith("Storage"):
            return name
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        return lambda *a, **k: None

    def persistent_load(self, pid):
        self.types[pid[2]] = pid[1]
        return None


ELEM = {"FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "BFloat16Storage": 2,
        "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1,
        "ByteStorage": 1, "BoolStorage": 1}


def rewrite_zip(src, dst, folder=None, edit=None, compression=zipfile.ZIP_STORED):
    """Copies a torch zip entry by entry; folder renames the top folder; edit(name, data)
    returns new data, or None to drop the entry."""
    with zipfile.ZipFile(path(src)) as zin, \
            zipfile.ZipFile(path(dst), "w", compression=compression) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            name = info.filename
            if folder is not None:
                name = folder + "/" + name.split("/", 1)[1]
            if edit is not None:
                data = edit(name, data)
                if data is None:
                    continue
            zi = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            zi.compress_type = compression
            zout.writestr(zi, data)


# ---- state dicts ---------------------------------------------------------------------

def vgg_state_dict(seed):
    torch.manual_seed(seed)
    m = nn.Module()  # the names of torchvision's VGG with tiny layers
    m.features = make_layers([8, "M", 16, "M"], batch_norm=True)
    m.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    m.classifier = nn.Sequential(nn.Linear(16, 12), nn.ReLU(True), nn.Dropout(),
                                 nn.Linear(12, 12), nn.ReLU(True), nn.Dropout(),
                                 nn.Linear(12, 10))
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_()
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
                mod.num_batches_tracked.fill_(7)
    return m.state_dict()


def views_state_dict():
    torch.manual_seed(5)
    big = torch.randn(10, 12)
    sd = collections.OrderedDict()
    sd["w"] = big[2:5, 1::2]                         # offset + strides (12, 2)
    sd["row"] = big[7]                               # offset 84
    sd["col"] = big[:, 3]                            # stride 12
    sd["t"] = big.t()[1:4]                           # transposed: strides (1, 12)
    sd["e"] = torch.randn(3, 1).expand(3, 4)         # stride 0
    sd["scalar"] = torch.tensor(2.5)                 # 0-d
    sd["empty"] = torch.zeros(0, 3)                  # no elements
    sd["count"] = big.new_tensor(11, dtype=torch.int64)
    sd["whole"] = big                                # the shared storage itself
    return sd


def ints_state_dict():
    sd = collections.OrderedDict()
    sd["i32"] = torch.tensor([[-2147483648, 2147483647], [-1, 0]], dtype=torch.int32)
    sd["i16"] = torch.tensor([-32768, 32767, -5], dtype=torch.int16)
    sd["i8"] = torch.tensor([-128, 127, -1], dtype=torch.int8)
    sd["u8"] = torch.tensor([0, 255, 128], dtype=torch.uint8)
    sd["flags"] = torch.tensor([True, False, True])
    sd["i64"] = torch.tensor([-(2 ** 62), 2 ** 62 + 3], dtype=torch.int64)
    return sd


# ---- hostile pickles (bytes by hand) --------------------------------------------------

# PROTO 2; GLOBAL 'posix system'; BINPUT 0; BINUNICODE 'id'; BINPUT 1; TUPLE1; BINPUT 2;
# REDUCE; BINPUT 3; STOP
POSIX_SYSTEM = (b"\x80\x02" b"cposix\nsystem\n" b"q\x00" b"X\x02\x00\x00\x00id" b"q\x01"
                b"\x85" b"q\x02" b"R" b"q\x03" b".")
# PROTO 4; SHORT_BINUNICODE 'builtins'; MEMOIZE; SHORT_BINUNICODE 'eval'; MEMOIZE;
# STACK_GLOBAL; MEMOIZE; SHORT_BINUNICODE '1+1'; MEMOIZE; TUPLE1; MEMOIZE; REDUCE; STOP
BUILTINS_EVAL = (b"\x80\x04" b"\x8c\x08builtins\x94" b"\x8c\x04eval\x94" b"\x93\x94"
                 b"\x8c\x031+1\x94" b"\x85\x94" b"R\x94" b".")


def legacy_header():
    """The first three pickles of a legacy file, as torch writes them (plain data)."""
    sys_info = dict(protocol_version=1001, little_endian=True,
                    type_sizes=dict(short=2, int=4, long=8))
    return (pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2) +
            pickle.dumps(1001, protocol=2) + pickle.dumps(sys_info, protocol=2))


def legacy_data_offset(name):
    """Byte offset of the storage data of one of our legacy files, and the keys."""
    with open(path(name), "rb") as f:
        for _ in range(3):
            pickle.load(f)
        RecordingUnpickler(f).load()
        keys = pickle.load(f)
        return f.tell(), keys


# ---- main ----------------------------------------------------------------------------------

def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    expected = {}  # checkpoint -> expected safetensors file

    sd = vgg_state_dict(1)
    write_safetensors("vgg.expected.safetensors", expected_of(sd))
    torch.save(sd, path("vgg_zip.pth"))
    torch.save(sd, path("vgg_legacy.pth"), _use_new_zipfile_serialization=False)
    torch.save(sd, path("vgg_zip_p4.pth"), pickle_protocol=4)
    torch.save(sd, path("vgg_legacy_p4.pth"), pickle_protocol=4,
               _use_new_zipfile_serialization=False)
    for n in ("vgg_zip", "vgg_legacy", "vgg_zip_p4", "vgg_legacy_p4"):
        expected[n + ".pth"] = "vgg.expected.safetensors"

    for tag, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        low = collections.OrderedDict(
            (k, v.to(dt) if v.is_floating_point() else v) for k, v in sd.items())
        torch.save(low, path("vgg_%s.pth" % tag))
        write_safetensors("vgg_%s.expected.safetensors" % tag, expected_of(low))
        expected["vgg_%s.pth" % tag] = "vgg_%s.expected.safetensors" % tag

    torch.manual_seed(2)
    sd64 = collections.OrderedDict(
        (k, v.double() * (1 + 1e-9 * torch.randn(v.shape, dtype=torch.float64))
         if v.is_floating_point() else v) for k, v in sd.items())
    torch.save(sd64, path("vgg_f64.pth"))
    write_safetensors("vgg_f64.expected.safetensors", expected_of(sd64))
    expected["vgg_f64.pth"] = "vgg_f64.expected.safetensors"

    p = nn.Parameter(torch.randn(3))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    p.sum().backward()
    opt.step()
    torch.save({"state_dict": sd, "epoch": 3, "optimizer": opt.state_dict(), "arch": "vgg"},
               path("nested_state_dict.pth"))
    torch.save({"model": sd, "epoch": 5}, path("nested_model.pth"))
    torch.save(collections.OrderedDict(("module." + k, v) for k, v in sd.items()),
               path("dataparallel.pth"))
    rewrite_zip("vgg_zip.pth", "weird_prefix.pth", folder="weird_name")
    for n in ("nested_state_dict", "nested_model", "dataparallel", "weird_prefix"):
        expected[n + ".pth"] = "vgg.expected.safetensors"

    with zipfile.ZipFile(path("vgg_zip.pth")) as z:
        rec = RecordingUnpickler(io.BytesIO(z.read("vgg_zip/data.pkl")))
        rec.load()

    def to_big(name, data):
        if name.endswith("/byteorder"):
            return None
        if "/data/" in name:
            key = name.rsplit("/", 1)[1]
            e = ELEM[rec.types[key]]
            return b"".join(data[i:i + e][::-1] for i in range(0, len(data), e))
        return data

    rewrite_zip("vgg_zip.pth", "big_endian.pth", edit=to_big)
    with zipfile.ZipFile(path("big_endian.pth"), "a") as z:
        z.writestr("vgg_zip/byteorder", "big")
    expected["big_endian.pth"] = "vgg.expected.safetensors"

    vs = views_state_dict()
    torch.save(vs, path("views.pth"))
    torch.save(vs, path("views_legacy.pth"), _use_new_zipfile_serialization=False)
    write_safetensors("views.expected.safetensors", expected_of(vs))
    expected["views.pth"] = expected["views_legacy.pth"] = "views.expected.safetensors"

    ints = ints_state_dict()
    torch.save(ints, path("ints.pth"))
    write_safetensors("ints.expected.safetensors", expected_of(ints))
    expected["ints.pth"] = "ints.expected.safetensors"

    torch.manual_seed(3)
    params = collections.OrderedDict(
        [("weight", nn.Parameter(torch.randn(2, 3))), ("bias", nn.Parameter(torch.randn(2)))])
    torch.save(params, path("parameter.pth"))
    write_safetensors("parameter.expected.safetensors", expected_of(params))
    expected["parameter.pth"] = "parameter.expected.safetensors"

    # ---- hostile and broken files ----
    with zipfile.ZipFile(path("hostile_posix_system.pth"), "w") as z:
        z.writestr("archive/data.pkl", POSIX_SYSTEM)
        z.writestr("archive/version", "3\n")
    write_bytes("hostile_builtins_eval.pth",
                legacy_header() + BUILTINS_EVAL + pickle.dumps([], protocol=2))
    torch.save(nn.Linear(2, 2), path("whole_module.pth"))
    zbytes = read_bytes("vgg_zip.pth")
    write_bytes("truncated.pth", zbytes[:len(zbytes) // 2])
    rng = random.Random(7)
    noise = bytes(rng.randrange(256) for _ in range(4096))
    write_bytes("random.pth", b"\x00" + noise[1:])

    lbytes = bytearray(read_bytes("vgg_legacy.pth"))
    off, _ = legacy_data_offset("vgg_legacy.pth")
    struct.pack_into("<Q", lbytes, off, 2 ** 40)
    write_bytes("legacy_bad_count.pth", bytes(lbytes))
    lbytes = read_bytes("vgg_legacy.pth")
    write_bytes("legacy_truncated.pth", lbytes[:len(lbytes) - 100])

    rewrite_zip("vgg_zip.pth", "zip_short_storage.pth",
                edit=lambda n, d: d[:-4] if n.endswith("/data/0") else d)

    torch.save({"w": torch.zeros(4 << 20)}, path("zip_bomb_src.pth"))
    rewrite_zip("zip_bomb_src.pth", "zip_bomb.pth", compression=zipfile.ZIP_DEFLATED)
    os.remove(path("zip_bomb_src.pth"))

    rewrite_zip("vgg_zip.pth", "zip_missing_storage.pth",
                edit=lambda n, d: None if n.endswith("/data/3") else d)
    torch.save({"w": torch.zeros(1).expand(1 << 20, 1 << 20)}, path("expanded_view.pth"))

    torch.save([torch.ones(2)], path("list_top.pth"))
    torch.save({"a": torch.ones(2), "epoch": 3}, path("mixed_top.pth"))

    # ---- self-check: torch reads every good checkpoint as expected ----
    for ckpt, exp_name in sorted(expected.items()):
        obj = torch.load(path(ckpt)) if ckpt != "big_endian.pth" else None
        want = read_safetensors(exp_name)
        if obj is None:  # torch 1.13 ignores "byteorder": compare with the source
            continue
        if "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        elif "model" in obj and isinstance(obj["model"], dict):
            obj = obj["model"]
        keys = list(obj.keys())
        if all(k.startswith("module.") for k in keys):
            obj = collections.OrderedDict((k[7:], v) for k, v in obj.items())
        got = expected_of(obj)
        assert [k for k, _ in got] == list(want.keys()), ckpt
        for k, v in got:
            assert v.dtype == want[k].dtype and v.shape == want[k].shape, (ckpt, k)
            assert torch.equal(v, want[k]), (ckpt, k)

    rows, total = [], 0
    for name in sorted(os.listdir(OUT)):
        data = read_bytes(name)
        total += len(data)
        rows.append("%s\t%d\t%s\n" % (name, len(data), hashlib.sha256(data).hexdigest()))
    with open(path("MANIFEST.tsv"), "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(rows))
    total += os.path.getsize(path("MANIFEST.tsv"))
    assert total < MAX_TOTAL, "pth fixtures exceed 1 MB: %d" % total
    print("self-check OK; %d files, %d bytes" % (len(rows) + 1, total))
    return 0


if __name__ == "__main__":
    sys.exit(main())
